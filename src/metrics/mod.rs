//! What a scrape of `/metrics` collects and from where.

pub mod histogram;
