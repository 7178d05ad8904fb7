//! `shcr generate`: a synthetic UK population as transaction Bundles per trust.

use std::path::PathBuf;

use crate::generate::{DEFAULT_PERSONS_PER_BUNDLE, GenerateOptions, write_to_dir};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[arg(long, default_value_t = 1000)]
    pub persons: usize,
    #[arg(long, default_value_t = 6)]
    pub trusts: usize,
    /// Same seed, same output (byte for byte).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Patient records per bundle file.
    #[arg(long, default_value_t = DEFAULT_PERSONS_PER_BUNDLE)]
    pub persons_per_bundle: usize,
    /// Output folder (must be empty or absent).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let opts = GenerateOptions {
        persons: args.persons,
        trusts: args.trusts,
        seed: args.seed,
        persons_per_bundle: args.persons_per_bundle,
    };
    let bar = super::import::progress_bar(opts.persons as u64, "generating persons");
    let summary = write_to_dir(&opts, &args.out, &bar)?;
    bar.finish_and_clear();
    println!(
        "wrote {} bundles ({} resources, {} patient records of {} persons across {} trusts) to {}",
        summary.bundles,
        summary.resources,
        summary.patient_records,
        summary.persons,
        summary.trusts.len(),
        args.out.display()
    );
    Ok(())
}
