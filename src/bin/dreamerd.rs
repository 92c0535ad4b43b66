//! `dreamerd`: the daemon and its command line.
fn main() {
    std::process::exit(dreamerd::cli::main(dreamerd::cli::Flavor::Dreamerd));
}
