"""airspeed velocity (asv) benchmarks of skquant; configured by ../asv.conf.json."""
