//! The README's rule-engine example compiles and runs, and the README shows it verbatim.

// The example's own `fn main` is called by the test below (the test harness has its own).
include!("readme/example.rs");

#[test]
fn readme_rust_example_runs() {
    main().expect("README example");
}

#[test]
fn readme_shows_the_tested_example() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```rust\n")
        .expect("README has a ```rust block")
        + "```rust\n".len();
    let len = readme[start..]
        .find("```\n")
        .expect("the ```rust block is closed");
    assert_eq!(
        &readme[start..start + len],
        include_str!("readme/example.rs"),
        "the README's ```rust block must equal crates/srotax/tests/readme/example.rs"
    );
}
