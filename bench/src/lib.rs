//! Benchmarks of ringmx against its peers; see benches/.
