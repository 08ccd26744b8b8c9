//! `bcw-baseline`: the benchmark's baseline pipeline, started by `bcw-load bench` as a process
//! of its own, like the worker. A binary of its own so that it runs on the worker's allocator
//! (jemalloc, configured by `.cargo/config.toml`), while `bcw-load` (kube-sim and the load
//! generator) runs on mimalloc.

mod baseline;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    baseline::run(baseline::BaselineArgs::parse()).await
}
