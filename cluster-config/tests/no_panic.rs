//! Bad input never panics the parser (DESIGN.md invariant 7): arbitrary text and mutations of
//! the shipped example are fed to `parse`, which may reject them but must return.

use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../deploy/examples/cluster.yaml");

/// One edit of the example text, applied at a character position.
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, with: char },
    Duplicate { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fragment = prop_oneof![
        Just(":".to_owned()),
        Just("- ".to_owned()),
        Just("\n  ".to_owned()),
        Just("[".to_owned()),
        Just("{".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: ".to_owned()),
        Just("!tag ".to_owned()),
        Just("\"".to_owned()),
        Just("..".to_owned()),
        Just("/".to_owned()),
        "[ -~]{0,8}",
        any::<String>(),
    ];
    prop_oneof![
        (any::<usize>(), 0..40usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), fragment).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), any::<char>()).prop_map(|(at, with)| Mutation::Replace { at, with }),
        (any::<usize>(), 0..200usize).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let position = |at: usize, chars: &Vec<char>| at % (chars.len() + 1);
    match mutation {
        Mutation::Delete { at, len } => {
            let start = position(*at, &chars);
            let end = (start + len).min(chars.len());
            chars.drain(start..end);
        }
        Mutation::Insert { at, text } => {
            let start = position(*at, &chars);
            chars.splice(start..start, text.chars());
        }
        Mutation::Replace { at, with } => {
            if !chars.is_empty() {
                let index = at % chars.len();
                chars[index] = *with;
            }
        }
        Mutation::Duplicate { at, len } => {
            let start = position(*at, &chars);
            let end = (start + len).min(chars.len());
            let copy: Vec<char> = chars[start..end].to_vec();
            chars.splice(start..start, copy);
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = cluster_config::parse(&text, "fuzz.yaml");
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z0-9_:\\-\\[\\]{}\"'&*!|>#,.@/ \n]{0,300}") {
        let _ = cluster_config::parse(&text, "fuzz.yaml");
    }

    #[test]
    fn mutated_example_never_panics(mutations in prop::collection::vec(mutation(), 1..6)) {
        let text = mutations.iter().fold(EXAMPLE.to_owned(), |text, mutation| apply(&text, mutation));
        if let Err(error) = cluster_config::parse(&text, "fuzz.yaml") {
            // Every diagnostic points inside the text it came from.
            let lines = text.split('\n').count();
            for diagnostic in error.diagnostics() {
                prop_assert!(diagnostic.line >= 1 && diagnostic.line <= lines.max(1) + 1, "{diagnostic}");
                prop_assert!(diagnostic.column >= 1, "{diagnostic}");
            }
        }
    }
}

#[test]
fn pathological_inputs_return() {
    let deep = "[".repeat(100_000);
    let aliases = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                   c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                   e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                   g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
                   i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
    for text in [
        deep.as_str(),
        aliases,
        "\u{feff}",
        "\0",
        "---\n---\n",
        "? [a]\n: b\n",
        "*x",
    ] {
        assert!(cluster_config::parse(text, "fuzz.yaml").is_err());
    }
}
