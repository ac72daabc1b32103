//! Integration tests of nasc-datasets: native formats from fixtures, errors, cache, batches, fetch, real data.
//! They must not reach the network: downloads come from a loopback server started here.

mod batches;
mod cache;
mod errors;
mod fashion_mnist;
mod fetch;
mod fixtures;
mod formats;
mod server;

use std::path::Path;

use nasc_datasets::{DataError, LoadOptions};

/// Options for fixtures: they are far smaller than the published splits,
/// and their cache goes in a folder of the test's choosing.
pub fn fixture_options(cache_dir: &Path) -> LoadOptions {
    LoadOptions { cache_dir: Some(cache_dir.to_path_buf()), check_published_counts: false, ..LoadOptions::default() }
}

/// An error's message with the temporary folder replaced by `<root>`, so
/// that snapshots do not depend on where the test ran.
pub fn message(error: DataError, root: &Path) -> String {
    error.to_string().replace(&root.display().to_string(), "<root>")
}
