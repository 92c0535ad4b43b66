//! `dreamer`: the two commands agent projects already use, `dreamer push` and `dreamer database restore`.
fn main() {
    std::process::exit(dreamerd::cli::main(dreamerd::cli::Flavor::Dreamer));
}
