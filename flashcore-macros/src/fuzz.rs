//! Fuzzing `#[flash_kernel]` (issue 7, item 5): random kernel bodies and attributes, generated
//! from the DSL's grammar and mutated from every kernel in the repository, go through the
//! macro's `expand`. It must never panic: each input either expands into Rust that parses, or
//! into a `compile_error!` that points at the user's tokens (or the attribute, for errors about
//! the whole item), and never reports an internal compiler error.
//!
//! CI runs `CASES_IN_CI` inputs; `FLASHCORE_FUZZ_MACRO=N cargo test --release -p flashcore-macros
//! fuzz -- --nocapture` runs a campaign of N (spread over threads; each thread parses its own
//! seeds because proc-macro2's span table is per thread); `FLASHCORE_FUZZ_SEED=S` draws another
//! stream of inputs.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use proc_macro2::{Delimiter, Group, Ident, Punct, Spacing, TokenStream, TokenTree};
use quote::ToTokens;

/// Inputs per CI run (debug build: a few seconds).
const CASES_IN_CI: usize = 3000;

/// splitmix64: the facade's `Rng` is out of reach (the facade depends on this crate).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A kernel as the macro receives it: the attribute's arguments and the function.
#[derive(Clone)]
struct Input {
    attr: TokenStream,
    item: TokenStream,
}

/// Every `#[flash_kernel]` function in the repository (the library's kernels, the backward's,
/// the element-store test kernels, the UI tests' passing and failing kernels, the hang
/// example), parsed on this thread.
fn seeds() -> Vec<Input> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![
        root.join("src/kernels.rs"),
        root.join("src/kernels/variants.rs"),
        root.join("src/kernels/backward.rs"),
        root.join("tests/stores.rs"),
        root.join("examples/hang.rs"),
    ];
    let mut ui: Vec<_> = std::fs::read_dir(root.join("tests/ui"))
        .expect("tests/ui")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    ui.sort();
    files.extend(ui);
    let mut seeds = vec![];
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seeds.extend(file.items.into_iter().filter_map(|item| match item {
            syn::Item::Fn(f) => macro_input(f),
            _ => None,
        }));
    }
    assert!(seeds.len() >= 15, "expected the repository's kernels as seeds, found {}", seeds.len());
    seeds
}

/// Tokens a mutation may put in: the DSL's words, Rust's, and values at and past the edges.
const IDENTS: &[&str] = &[
    "load",
    "stage",
    "mma",
    "fill",
    "zeros",
    "max",
    "row_max",
    "row_sum",
    "col_max",
    "col_sum",
    "exp2",
    "exp",
    "tanh",
    "fast_tanh",
    "select",
    "mask",
    "min",
    "index",
    "at",
    "i32",
    "store",
    "log_sum_exp",
    "tiles",
    "pipeline",
    "tile",
    "t",
    "to",
    "role",
    "compute",
    "softmax",
    "Tensor",
    "TensorMut",
    "Option",
    "SeqOffsets",
    "f16",
    "bf16",
    "f32",
    "T",
    "B",
    "H",
    "HKV",
    "S",
    "SK",
    "D",
    "TILE_M",
    "TILE_N",
    "NEG_INF",
    "LOG2_E",
    "q",
    "k",
    "v",
    "o",
    "lse",
    "scale",
    "qf",
    "ks",
    "vs",
    "s",
    "p",
    "m",
    "l",
    "acc",
    "m_new",
    "alpha",
    "b",
    "h",
    "qt",
    "kt",
    "let",
    "mut",
    "for",
    "in",
    "fn",
    "if",
    "loop",
    "while",
    "return",
    "self",
    "tile_m",
    "tile_n",
    "head_dim",
    "stages",
    "warps",
    "kv_splits",
    "persistent",
    "causal",
    "varlen",
    "a_in_smem",
    "overlap",
    "tma",
    "pingpong",
    "packed_rows",
    "dtype",
    "x",
    "unknown",
];
const LITERALS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "8",
    "16",
    "17",
    "32",
    "48",
    "64",
    "96",
    "128",
    "256",
    "1024",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "0.0",
    "1.5",
    "-1",
    "1e39",
    "\"text\"",
    "'c'",
    "true",
    "false",
    "0u8",
    "64usize",
];
const PUNCTS: &[char] =
    &['+', '-', '*', '/', '%', '=', '<', '>', '.', ',', ';', ':', '!', '&', '|', '#', '?', '@'];
/// Whole fragments to insert: statements, expressions, attributes, types, config items.
const SNIPPETS: &[&str] = &[
    "#[role(compute)]",
    "#[role(load)]",
    "#[role(softmax)]",
    "#[role(unknown)]",
    "#[role]",
    "let qf = load(q.tile(b, h, qt));",
    "let ks = stage(k.tile(b, h, kt));",
    "let vs = stage(v.tile(b, h / (H / HKV), kt));",
    "let s = mma(qf, ks.t()) * (scale * LOG2_E);",
    "acc = mma(p.to::<T>(), vs, acc);",
    "acc = mma(p, vs, acc);",
    "let m_new = max(m, row_max(s));",
    "let p = exp2(s - m_new);",
    "let s = mask(s, s.index(SK) <= s.index(S) + (SK - S));",
    "let s = mask(s, doc.at(b, s.index(S)) == doc.at(b, s.index(SK)));",
    "let s = cap * tanh(s / cap);",
    "let s = select(s.index(S) < 7, s, s * 2.0);",
    "let s = (s + bias.at(b, h, s.index(S), s.index(SK))) * LOG2_E;",
    "let p = exp2(s - m_new) + 1.0;",
    "doc: Tensor<i32, B, S>,",
    "bias: Tensor<f32, B, H, S, SK>,",
    "!(s.index(S) % 3 == 1) || h > 2",
    "l = l * alpha + row_sum(p);",
    "store(o.tile(b, h, qt), acc / l);",
    "store(lse.tile(b, h, qt), log_sum_exp(m, l));",
    "store(scores.at(b, h, s.index(S), s.index(SK)), s);",
    "store(key_maxes.at(b, h, qt, s.index(SK)), col_max(s));",
    "scores: TensorMut<f32, B, H, S, SK>,",
    "let mut acc = zeros([TILE_M, D]);",
    "let mut m = fill([TILE_M], NEG_INF);",
    "for kt in pipeline(0..SK / TILE_N) { let ks = stage(k.tile(b, h, kt)); }",
    "for (b, h, qt) in tiles(B, H, S / TILE_M) { }",
    "q.tile(b, h)",
    "k.tile(b, h, kt, kt)",
    ".t()",
    ".to::<f32>()",
    "[TILE_M, TILE_N]",
    "Tensor<f16, B, H, S, D>",
    "TensorMut<f32, B, H, S>",
    "Option<SeqOffsets<B, S>>",
    "x: Tensor<bf16, B, H, S, 64>,",
    "tile_m = 16,",
    "warps(compute = 8, load = 2, softmax = 1),",
    "kv_splits = 2,",
    "stages = 0,",
    "dtype = bf16,",
    "persistent = false,",
];

/// Counts every token of `trees` (groups and what they hold).
fn count_nodes(trees: &TokenStream) -> usize {
    trees
        .clone()
        .into_iter()
        .map(|t| match t {
            TokenTree::Group(g) => 1 + count_nodes(&g.stream()),
            _ => 1,
        })
        .sum()
}

/// Applies `edit` at the `target`-th token (depth first) of `stream`, inside whichever group
/// holds it. `edit` gets the list that holds the token and its index there.
fn edit_at(
    stream: TokenStream,
    target: &mut usize,
    edit: &mut dyn FnMut(&mut Vec<TokenTree>, usize),
) -> TokenStream {
    let mut trees: Vec<TokenTree> = stream.into_iter().collect();
    let mut i = 0;
    while i < trees.len() {
        if *target == 0 {
            edit(&mut trees, i);
            *target = usize::MAX;
            break;
        }
        *target -= 1;
        if let TokenTree::Group(g) = &trees[i] {
            let inner = edit_at(g.stream(), target, edit);
            let mut rebuilt = Group::new(g.delimiter(), inner);
            rebuilt.set_span(g.span());
            trees[i] = TokenTree::Group(rebuilt);
            if *target == usize::MAX {
                break;
            }
        }
        i += 1;
    }
    trees.into_iter().collect()
}

/// One random change to `stream`; inserted tokens keep the span of the token they replace
/// when there is one, so errors about them still point into the input.
fn mutate(stream: TokenStream, rng: &mut Rng, donors: &[Input], snippets: &[TokenStream]) -> TokenStream {
    let nodes = count_nodes(&stream);
    if nodes == 0 {
        return rng.pick(snippets).clone();
    }
    let mut target = rng.below(nodes);
    let op = rng.below(10);
    let donor = rng.pick(donors).clone();
    let snippet = rng.pick(snippets).clone();
    let (ident, literal, punct) = (*rng.pick(IDENTS), *rng.pick(LITERALS), *rng.pick(PUNCTS));
    let delimiter =
        *rng.pick(&[Delimiter::Parenthesis, Delimiter::Brace, Delimiter::Bracket, Delimiter::None]);
    let from_donor = rng.next() as usize;
    let other = rng.next() as usize;
    edit_at(stream, &mut target, &mut |trees, i| {
        let span = trees[i].span();
        match op {
            0 => {
                trees.remove(i);
            }
            1 => trees.insert(i, trees[i].clone()),
            2 if i + 1 < trees.len() => trees.swap(i, i + 1),
            2 => {
                let j = other % trees.len();
                trees.swap(i, j)
            }
            3 => trees[i] = TokenTree::Ident(Ident::new(ident, span)),
            4 => {
                let mut lit: Vec<TokenTree> =
                    literal.parse::<TokenStream>().expect("a literal").into_iter().collect();
                for t in &mut lit {
                    t.set_span(span);
                }
                trees.splice(i..=i, lit);
            }
            5 => trees.splice(i..i, snippet.clone()).for_each(drop),
            6 => {
                let mut p = Punct::new(punct, Spacing::Alone);
                p.set_span(span);
                trees[i] = TokenTree::Punct(p);
            }
            7 => {
                if let TokenTree::Group(g) = &trees[i] {
                    let mut changed = Group::new(delimiter, g.stream());
                    changed.set_span(span);
                    trees[i] = TokenTree::Group(changed);
                }
            }
            // Crossover: a group from another kernel in place of this token.
            _ => {
                let groups: Vec<TokenTree> = donor
                    .item
                    .clone()
                    .into_iter()
                    .chain(donor.attr.clone())
                    .flat_map(|t| match &t {
                        TokenTree::Group(g) => g.stream().into_iter().chain([t.clone()]).collect::<Vec<_>>(),
                        _ => vec![t],
                    })
                    .collect();
                if !groups.is_empty() {
                    trees[i] = groups[from_donor % groups.len()].clone();
                }
            }
        }
    })
}

/// A random config attribute: most are built valid (so that generated kernels reach the passes
/// and the code generator), the rest draw each field from sensible and out-of-range values.
fn random_attr(rng: &mut Rng) -> String {
    let mut items = vec![];
    if rng.chance(70) {
        let kv_splits = *rng.pick(&[1, 1, 2, 4]);
        let row_warps = *rng.pick(&[1, 2, 4]);
        let load_warps = *rng.pick(&[0, 0, 1, 2]);
        let softmax_warps =
            if load_warps > 0 && kv_splits == 1 { *rng.pick(&[0, 0, 1, row_warps]) } else { 0 };
        items.push(format!("tile_m = {}", rng.pick(&[16, 32, 64]) * row_warps));
        items.push(format!("tile_n = {}", (*rng.pick(&[32, 64, 128]) as u32).max(16 * kv_splits)));
        items.push(format!("head_dim = {}", rng.pick(&[64, 128, 32, 96])));
        items.push(format!("stages = {}", rng.pick(&[1, 2, 3])));
        items.push(format!("kv_splits = {kv_splits}"));
        items.push(format!(
            "warps(compute = {}, load = {load_warps}, softmax = {softmax_warps})",
            row_warps * kv_splits
        ));
    } else {
        for (field, values) in [
            ("tile_m", &["16", "32", "64", "128", "48", "0", "256"][..]),
            ("tile_n", &["32", "64", "128", "256", "24", "0"][..]),
            ("head_dim", &["64", "128", "32", "96", "80", "256"][..]),
            ("stages", &["1", "2", "3", "0", "9"][..]),
            ("kv_splits", &["1", "2", "4", "3", "0"][..]),
        ] {
            if rng.chance(80) {
                items.push(format!("{field} = {}", rng.pick(values)));
            }
        }
        match rng.below(3) {
            0 => items.push(format!("warps = {}", rng.pick(&["1", "2", "4", "8", "3"]))),
            1 => items.push(format!(
                "warps(compute = {}, load = {}, softmax = {})",
                rng.pick(&["2", "4", "8", "11"]),
                rng.pick(&["0", "1", "2", "4"]),
                rng.pick(&["0", "0", "1", "4"])
            )),
            _ => {}
        }
    }
    for flag in ["persistent", "causal", "varlen", "a_in_smem", "overlap", "tma", "pingpong"] {
        match rng.below(4) {
            0 => items.push(flag.to_string()),
            1 => items.push(format!("{flag} = {}", rng.pick(&["true", "false"]))),
            _ => {}
        }
    }
    if rng.chance(20) {
        items.push(format!("dtype = {}", rng.pick(&["f16", "bf16"])));
    }
    items.join(", ")
}

/// A kernel body drawn from the attention kernel's statements: each kept, dropped, repeated,
/// moved or re-roled at random, with random names swapped in, under a random attribute.
fn random_kernel(rng: &mut Rng) -> String {
    const NAMES: &[&str] = &["qf", "ks", "vs", "s", "p", "m", "l", "acc", "m_new", "alpha"];
    let name = |rng: &mut Rng, default: &'static str| if rng.chance(99) { default } else { *rng.pick(NAMES) };
    let mut prologue = vec![
        format!("let {} = load(q.tile(b, h, qt));", name(rng, "qf")),
        format!("let mut {} = fill([TILE_M], NEG_INF);", name(rng, "m")),
        format!("let mut {} = fill([TILE_M], 0.0);", name(rng, "l")),
        format!("let mut {} = zeros([TILE_M, D]);", name(rng, "acc")),
    ];
    let mut loads = vec![
        format!("let {} = stage(k.tile(b, h / (H / HKV), kt));", name(rng, "ks")),
        format!("let {} = stage(v.tile(b, h / (H / HKV), kt));", name(rng, "vs")),
    ];
    let mut scores = vec![format!(
        "let {} = mma({}, {}.t()) * (scale * LOG2_E);",
        name(rng, "s"),
        name(rng, "qf"),
        name(rng, "ks")
    )];
    let mut softmax = vec![
        format!("let {} = max({}, row_max({}));", name(rng, "m_new"), name(rng, "m"), name(rng, "s")),
        format!("let {} = exp2({} - {});", name(rng, "p"), name(rng, "s"), name(rng, "m_new")),
        format!("let {} = exp2({} - {});", name(rng, "alpha"), name(rng, "m"), name(rng, "m_new")),
        format!(
            "{} = {} * {} + row_sum({});",
            name(rng, "l"),
            name(rng, "l"),
            name(rng, "alpha"),
            name(rng, "p")
        ),
        format!("{} = {} * {};", name(rng, "acc"), name(rng, "acc"), name(rng, "alpha")),
        format!("{} = {};", name(rng, "m"), name(rng, "m_new")),
    ];
    let mut pv = vec![format!(
        "{} = mma({}.to::<T>(), {}, {});",
        name(rng, "acc"),
        name(rng, "p"),
        name(rng, "vs"),
        name(rng, "acc")
    )];
    let mut epilogue = vec![
        format!("store(lse.tile(b, h, qt), log_sum_exp({}, {}));", name(rng, "m"), name(rng, "l")),
        format!("store(o.tile(b, h, qt), {} / {});", name(rng, "acc"), name(rng, "l")),
    ];
    for part in [&mut prologue, &mut loads, &mut scores, &mut softmax, &mut pv, &mut epilogue] {
        if rng.chance(4) && !part.is_empty() {
            let i = rng.below(part.len());
            part.remove(i);
        }
        if rng.chance(4) && !part.is_empty() {
            let i = rng.below(part.len());
            part.push(part[i].clone());
        }
        if rng.chance(4) && part.len() > 1 {
            let (i, j) = (rng.below(part.len()), rng.below(part.len()));
            part.swap(i, j);
        }
    }
    let role = |rng: &mut Rng, default: &'static str| {
        if rng.chance(98) {
            default
        } else {
            *rng.pick(&["compute", "load", "softmax", "io"])
        }
    };
    let block = |role: &str, stmts: &[String]| format!("#[role({role})] {{ {} }}", stmts.join(" "));
    let first = prologue.first().cloned().unwrap_or_default();
    let body = format!(
        "for (b, h, qt) in tiles(B, H, S / TILE_M) {{ #[role({})] {} {} for kt in pipeline(0..SK / TILE_N) {{ {} {} {} {} }} {} }}",
        role(rng, "compute"),
        first,
        prologue.iter().skip(1).cloned().collect::<Vec<_>>().join(" "),
        block(role(rng, "load"), &loads),
        block(role(rng, "compute"), &scores),
        block(role(rng, "softmax"), &softmax),
        block(role(rng, "compute"), &pv),
        epilogue.join(" "),
    );
    let dims =
        if rng.chance(95) { "B, H, S, D" } else { *rng.pick(&["B, H, S", "B, H, S, 64", "B, S, H, D"]) };
    format!(
        "#[flash_kernel({})] pub fn attention<T>(q: Tensor<T, {dims}>, k: Tensor<T, B, HKV, SK, D>, \
         v: Tensor<T, B, HKV, SK, D>, o: TensorMut<T, B, H, S, D>, lse: Option<TensorMut<f32, B, H, S>>, \
         scale: f32, cu_q: Option<SeqOffsets<B, S>>, cu_k: Option<SeqOffsets<B, SK>>) {{ {body} }}",
        random_attr(rng)
    )
}

/// The macro's two inputs for a function with a `#[flash_kernel(..)]` attribute: the
/// attribute's arguments and the function without it.
fn macro_input(mut f: syn::ItemFn) -> Option<Input> {
    let at = f.attrs.iter().position(|a| a.path().is_ident("flash_kernel"))?;
    let attr = match &f.attrs.remove(at).meta {
        syn::Meta::List(list) => list.tokens.clone(),
        _ => TokenStream::new(),
    };
    Some(Input { attr, item: f.to_token_stream() })
}

/// Splits generated `#[flash_kernel(ATTR)] fn ..` source into the macro's two inputs.
fn split_input(source: &str) -> Input {
    let f: syn::ItemFn = syn::parse_str(source).unwrap_or_else(|e| panic!("generated kernel: {e}\n{source}"));
    macro_input(f).expect("generated kernels carry #[flash_kernel]")
}

/// What one input did.
#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    distinct: usize,
    expanded: usize,
    error_at_user_tokens: usize,
    error_at_attribute: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.cases += other.cases;
        self.distinct += other.distinct;
        self.expanded += other.expanded;
        self.error_at_user_tokens += other.error_at_user_tokens;
        self.error_at_attribute += other.error_at_attribute;
    }
}

/// Finds the `compile_error` of an expansion, if it has one.
fn compile_error_of(output: &TokenStream) -> Option<(proc_macro2::Span, String)> {
    let trees: Vec<TokenTree> = output.clone().into_iter().collect();
    for (i, t) in trees.iter().enumerate() {
        if let TokenTree::Ident(id) = t {
            if id == "compile_error" {
                let message = trees.get(i + 2).map(|g| g.to_string()).unwrap_or_default();
                return Some((id.span(), message));
            }
        }
    }
    None
}

/// Runs `cases` inputs from `seed` on this thread; panics with the input on any failure.
fn run_cases(seed: u64, cases: usize) -> Tally {
    let seeds = seeds();
    let snippets: Vec<TokenStream> = SNIPPETS.iter().map(|s| s.parse().expect("a snippet")).collect();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut seen = HashSet::new();
    for _ in 0..cases {
        let generated = rng.below(3) == 0;
        let mut input =
            if generated { split_input(&random_kernel(&mut rng)) } else { rng.pick(&seeds).clone() };
        // Mutate the seed kernels, and half of the generated ones (the rest go in as drawn).
        let mutations = if generated && rng.chance(50) { 0 } else { 1 + rng.below(3) };
        for _ in 0..mutations {
            if rng.chance(15) {
                input.attr = mutate(input.attr, &mut rng, &seeds, &snippets);
            } else if rng.chance(85) {
                input.item = mutate(input.item, &mut rng, &seeds, &snippets);
            }
        }
        tally.cases += 1;
        let shown = format!("#[flash_kernel({})] {}", input.attr, input.item);
        if !seen.insert(shown.clone()) {
            continue;
        }
        tally.distinct += 1;
        let output = catch_unwind(AssertUnwindSafe(|| crate::expand(input.attr.clone(), input.item.clone())))
            .unwrap_or_else(|_| panic!("the macro panicked on:\n{shown}"));
        if let Err(e) = syn::parse2::<syn::File>(output.clone()) {
            panic!("the expansion is not Rust ({e}) for:\n{shown}\n---\n{output}");
        }
        match compile_error_of(&output) {
            None => tally.expanded += 1,
            Some((span, message)) => {
                assert!(
                    !message.contains("internal compiler error"),
                    "internal error {message} for:\n{shown}"
                );
                assert!(
                    !message.trim_matches(|c| c == '"' || c == ' ').is_empty(),
                    "empty error for:\n{shown}"
                );
                // A real span: one of the input's tokens; else the call site, which rustc shows
                // as the `#[flash_kernel]` attribute.
                if span.source_text().is_some() {
                    tally.error_at_user_tokens += 1;
                } else {
                    tally.error_at_attribute += 1;
                }
            }
        }
    }
    tally
}

#[test]
fn the_macro_never_panics_and_every_error_is_spanned() {
    let total: usize =
        std::env::var("FLASHCORE_FUZZ_MACRO").ok().and_then(|n| n.parse().ok()).unwrap_or(CASES_IN_CI);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let started = std::time::Instant::now();
    // Batches of at most 5,000 per thread: each thread's span table grows with what it parses.
    // FLASHCORE_FUZZ_SEED picks another stream of inputs (the default is CI's).
    let seed: u64 =
        std::env::var("FLASHCORE_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0xF1A5_0000);
    let batches: Vec<(u64, usize)> = (0..total.div_ceil(5000))
        .map(|i| (seed.wrapping_add(i as u64), 5000.min(total - i * 5000)))
        .collect();
    let mut sum = Tally::default();
    for chunk in batches.chunks(threads) {
        let handles: Vec<_> =
            chunk.iter().map(|&(seed, n)| std::thread::spawn(move || run_cases(seed, n))).collect();
        for h in handles {
            sum.add(h.join().expect("a fuzz thread failed (its input is printed above)"));
        }
    }
    eprintln!(
        "macro fuzz (seed {seed}): {} inputs ({} distinct): {} expanded into kernels, {} compile errors at the user's tokens, {} at the attribute; 0 panics, 0 internal errors ({:.0} s)",
        sum.cases,
        sum.distinct,
        sum.expanded,
        sum.error_at_user_tokens,
        sum.error_at_attribute,
        started.elapsed().as_secs_f64()
    );
    assert!(sum.expanded > 0 && sum.error_at_user_tokens > 0, "{sum:?}");
}
