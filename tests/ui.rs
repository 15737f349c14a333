//! Compile-fail tests: each misuse of the DSL in `tests/ui/*.rs` must fail to compile with the
//! message and span pinned in its `.stderr` golden; `pass_*.rs` must compile and run.

#[test]
fn dsl_misuse_is_a_compile_error_at_the_right_span() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/[!p]*.rs");
}
