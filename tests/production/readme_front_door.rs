//! The README is a front door that cannot rot: its quickstart is
//! `examples/quickstart.rs` byte for byte (which cargo compiles, and which
//! `cargo run --example quickstart` runs), and no Rust block in the README
//! or the guide shows a rustdoc-hidden `# ` line, which GitHub would render
//! as text.

const README: &str = include_str!("../../README.md");
const GUIDE: &str = include_str!("../../docs/production.md");
const QUICKSTART: &str = include_str!("../../examples/quickstart.rs");

/// The fenced code blocks of a Markdown text: (info string, body).
fn code_blocks(markdown: &str) -> Vec<(&str, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(&str, String)> = None;
    for line in markdown.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim(), String::new())),
            (Some(_), Some("")) => blocks.push(open.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    blocks
}

#[test]
fn readme_quickstart_is_the_example_file() {
    let section = README
        .split("\n## Quickstart")
        .nth(1)
        .expect("the README has a Quickstart section");
    let section = section.split("\n## ").next().unwrap();
    let rust: Vec<String> = code_blocks(section)
        .into_iter()
        .filter(|(info, _)| *info == "rust")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(rust.len(), 1, "one Rust program in the quickstart");
    assert_eq!(
        rust[0], QUICKSTART,
        "the README's quickstart differs from examples/quickstart.rs: paste the file"
    );
}

#[test]
fn no_rustdoc_hidden_lines_in_rendered_markdown() {
    for (name, text) in [("README.md", README), ("docs/production.md", GUIDE)] {
        let blocks = code_blocks(text);
        assert!(blocks.iter().any(|(info, _)| *info == "rust"), "{name}");
        for (_, body) in blocks.iter().filter(|(info, _)| info.starts_with("rust")) {
            for line in body.lines() {
                let trimmed = line.trim_start();
                assert!(
                    trimmed != "#" && !trimmed.starts_with("# "),
                    "{name}: a rustdoc-hidden line renders as text: {line:?}"
                );
            }
        }
    }
}

#[test]
fn the_block_parser_sees_what_a_renderer_sees() {
    let text = "intro\n```rust\nfn main() {}\n# hidden\n```\nprose\n```sh\ncargo run\n```\n";
    let blocks = code_blocks(text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0], ("rust", "fn main() {}\n# hidden\n".to_string()));
    assert_eq!(blocks[1], ("sh", "cargo run\n".to_string()));
}
