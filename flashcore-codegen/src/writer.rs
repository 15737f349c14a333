//! `PtxWriter`: accumulates the body of one PTX entry with indentation and comments, hands out
//! deterministic virtual-register names (temporaries by class, value families by name), and
//! assembles the final text with the register declarations in front.

use std::fmt::Write;

/// PTX register classes the generator uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegClass {
    Pred,
    /// 32-bit integers and packed f16x2.
    B32,
    B64,
    F32,
}

impl RegClass {
    fn decl(self) -> &'static str {
        match self {
            RegClass::Pred => ".pred",
            RegClass::B32 => ".b32",
            RegClass::B64 => ".b64",
            RegClass::F32 => ".f32",
        }
    }

    fn temp_prefix(self) -> &'static str {
        match self {
            RegClass::Pred => "%p",
            RegClass::B32 => "%r",
            RegClass::B64 => "%rd",
            RegClass::F32 => "%f",
        }
    }
}

/// A named array of registers `{prefix}0 .. {prefix}{len-1}` declared as `{prefix}<len>`: one
/// register per element of a value. A value that is the same along one axis of its tile (a row
/// position, anything computed from row positions and uniforms) has `slots`: element `i` lives
/// in register `slots[i]`, shared with the other elements of its row (or column), and only
/// `max(slots) + 1` registers are declared.
#[derive(Clone, Debug, PartialEq)]
pub struct RegFamily {
    pub prefix: String,
    pub len: usize,
    pub slots: Option<std::sync::Arc<Vec<usize>>>,
}

impl RegFamily {
    /// Whether `other` names the same registers (an update written in place shares its
    /// operand's family).
    pub fn is(&self, other: &RegFamily) -> bool {
        self.prefix == other.prefix
    }

    pub fn at(&self, i: usize) -> String {
        debug_assert!(i < self.len, "{}{i} is past the family's {} registers", self.prefix, self.len);
        match &self.slots {
            Some(slots) => format!("{}{}", self.prefix, slots[i]),
            None => format!("{}{i}", self.prefix),
        }
    }

    /// The elements whose registers an elementwise op writes: every element, or with shared
    /// registers the first element of each.
    pub fn written(&self) -> Vec<usize> {
        match &self.slots {
            None => (0..self.len).collect(),
            Some(slots) => {
                let mut seen = vec![false; self.declared()];
                (0..self.len).filter(|&i| !std::mem::replace(&mut seen[slots[i]], true)).collect()
            }
        }
    }

    /// How many registers the family declares.
    pub fn declared(&self) -> usize {
        match &self.slots {
            Some(slots) => slots.iter().max().map_or(0, |m| m + 1),
            None => self.len,
        }
    }
}

#[derive(Default)]
pub struct PtxWriter {
    body: String,
    level: usize,
    temps: [usize; 4],
    families: Vec<(RegClass, RegFamily)>,
    labels: usize,
    /// Instructions being sorted by element ([`PtxWriter::begin_elements`]).
    elements: Option<ElementOrder>,
}

/// Instructions held back by element while an elementwise run is written: `lines[i]` is
/// element `i`'s text, `current` the element being written (`None`: straight to the body);
/// `by_element` off while a value every element reads is written (its registers are not
/// numbered by element).
#[derive(Default)]
struct ElementOrder {
    current: Option<usize>,
    lines: Vec<String>,
    by_element: bool,
}

fn class_index(c: RegClass) -> usize {
    match c {
        RegClass::Pred => 0,
        RegClass::B32 => 1,
        RegClass::B64 => 2,
        RegClass::F32 => 3,
    }
}

impl PtxWriter {
    /// A fresh temporary register of `class`.
    pub fn temp(&mut self, class: RegClass) -> String {
        let slot = &mut self.temps[class_index(class)];
        *slot += 1;
        format!("{}{}", class.temp_prefix(), *slot - 1)
    }

    /// A named register family. Names must be unique; the caller's namer guarantees it.
    pub fn family(&mut self, class: RegClass, prefix: String, len: usize) -> RegFamily {
        let family = RegFamily { prefix, len, slots: None };
        self.families.push((class, family.clone()));
        family
    }

    /// A register family named `stem` plus a number no other family has (for code emitted more
    /// than once for the same value, e.g. per row slot of a streaming group).
    /// A family of `slots.len()` elements in shared registers (see [`RegFamily`]).
    pub fn shared_family(&mut self, class: RegClass, prefix: String, slots: Vec<usize>) -> RegFamily {
        let family = RegFamily { prefix, len: slots.len(), slots: Some(std::sync::Arc::new(slots)) };
        self.families.push((class, family.clone()));
        family
    }

    pub fn fresh_family(&mut self, class: RegClass, stem: &str, len: usize) -> RegFamily {
        let prefix = format!("{stem}{}_", self.families.len());
        self.family(class, prefix, len)
    }

    /// A single named register (a family of one, declared without the `<n>` form).
    pub fn named(&mut self, class: RegClass, name: &str) -> String {
        self.families.push((class, RegFamily { prefix: name.to_string(), len: 0, slots: None }));
        name.to_string()
    }

    pub fn label(&mut self, hint: &str) -> String {
        self.labels += 1;
        format!("$L_{hint}_{}", self.labels - 1)
    }

    pub fn indent(&mut self) {
        self.level += 1;
    }

    pub fn dedent(&mut self) {
        self.level = self.level.saturating_sub(1);
    }

    /// One instruction (the trailing `;` is added).
    pub fn ins(&mut self, text: impl AsRef<str>) {
        let line = format!("{}{};\n", "\t".repeat(self.level + 1), text.as_ref());
        match &mut self.elements {
            Some(ElementOrder { current: Some(i), lines, .. }) => {
                if lines.len() <= *i {
                    lines.resize(*i + 1, String::new());
                }
                lines[*i].push_str(&line);
            }
            _ => self.body.push_str(&line),
        }
    }

    /// From here to [`PtxWriter::end_elements`], the instructions written while
    /// [`PtxWriter::element`] names an element are held back with that element's; the others
    /// (comments, and instructions written with no element named) go to the body at once.
    pub fn begin_elements(&mut self) {
        self.elements = Some(ElementOrder::default());
    }

    /// The element the next instructions compute (`None`: instructions every element needs,
    /// written at once). Outside [`PtxWriter::begin_elements`], or with
    /// [`PtxWriter::by_element`] off, this does nothing.
    pub fn element(&mut self, i: Option<usize>) {
        if let Some(order) = &mut self.elements {
            order.current = i.filter(|_| order.by_element);
        }
    }

    /// Whether the next op's registers are numbered by element, so that
    /// [`PtxWriter::element`] sorts its instructions (a tile, or a row or column position whose
    /// register `i` is written at the first element that reads it), or not (a uniform, a row
    /// vector: written at once). Resets the current element.
    pub fn by_element(&mut self, on: bool) {
        if let Some(order) = &mut self.elements {
            order.by_element = on;
            order.current = None;
        }
    }

    /// The held-back instructions, element 0's first, then element 1's, and so on.
    pub fn end_elements(&mut self) {
        if let Some(order) = self.elements.take() {
            for text in order.lines {
                self.body.push_str(&text);
            }
        }
    }

    /// `dst = src / divisor` (unsigned 32-bit) for a divisor known at compile time: a shift for
    /// a power of two, otherwise a multiply-high by the divisor's magic number (see
    /// [`DivisionByConstant`]). ptxas lowers `div.u32` by an immediate to the general division
    /// (a float reciprocal and two corrections, about 15 instructions), even for 2. `dst` may be
    /// `src`.
    pub fn div_u32_by(&mut self, dst: &str, src: &str, divisor: u32) {
        match DivisionByConstant::new(divisor) {
            DivisionByConstant::One => self.mov_if_other(dst, src),
            DivisionByConstant::Shift(k) => self.ins(format!("shr.u32 {dst}, {src}, {k}")),
            DivisionByConstant::Magic { multiplier, shift } => {
                // q = (t + ((x - t) >> 1)) >> (shift - 1), t = mulhi(x, multiplier): exact for every x.
                let (t, half) = (self.temp(RegClass::B32), self.temp(RegClass::B32));
                self.ins(format!("mul.hi.u32 {t}, {src}, {multiplier}"));
                self.ins(format!("sub.u32 {half}, {src}, {t}"));
                self.ins(format!("shr.u32 {half}, {half}, 1"));
                self.ins(format!("add.u32 {half}, {half}, {t}"));
                self.ins(format!("shr.u32 {dst}, {half}, {}", shift - 1));
            }
        }
    }

    /// `dst = src % divisor` (unsigned 32-bit) for a divisor known at compile time: a mask for a
    /// power of two, otherwise `src - (src / divisor) * divisor`. `dst` may be `src`.
    pub fn rem_u32_by(&mut self, dst: &str, src: &str, divisor: u32) {
        match DivisionByConstant::new(divisor) {
            DivisionByConstant::One => self.ins(format!("mov.u32 {dst}, 0")),
            DivisionByConstant::Shift(k) => self.ins(format!("and.b32 {dst}, {src}, {}", (1u32 << k) - 1)),
            DivisionByConstant::Magic { .. } => {
                let q = self.temp(RegClass::B32);
                self.div_u32_by(&q, src, divisor);
                self.ins(format!("mul.lo.u32 {q}, {q}, {divisor}"));
                self.ins(format!("sub.u32 {dst}, {src}, {q}"));
            }
        }
    }

    fn mov_if_other(&mut self, dst: &str, src: &str) {
        if dst != src {
            self.ins(format!("mov.u32 {dst}, {src}"));
        }
    }

    /// A `//` comment line, in ASCII: the driver's PTX JIT refuses any other byte, even in a
    /// comment (IR text and user names may hold `·`, `ᵀ`, `≥` or any identifier).
    pub fn comment(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.body, "{}// {}", "\t".repeat(self.level + 1), ascii(text.as_ref()));
    }

    /// Where the text written so far ends, for [`PtxWriter::take_since`].
    pub fn mark(&self) -> usize {
        self.body.len()
    }

    /// The text written since `mark`, taken out, to be put back later with
    /// [`PtxWriter::put_back`] (instructions computed now, emitted elsewhere).
    pub fn take_since(&mut self, mark: usize) -> String {
        self.body.split_off(mark)
    }

    /// Text taken with [`PtxWriter::take_since`], written again here.
    pub fn put_back(&mut self, text: &str) {
        self.body.push_str(text);
    }

    pub fn place_label(&mut self, label: &str) {
        let _ = writeln!(self.body, "{label}:");
    }

    pub fn blank(&mut self) {
        self.body.push('\n');
    }

    /// The register declarations followed by the body.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for class in [RegClass::Pred, RegClass::B32, RegClass::B64, RegClass::F32] {
            let n = self.temps[class_index(class)];
            if n > 0 {
                let _ = writeln!(out, "\t.reg {} {}<{n}>;", class.decl(), class.temp_prefix());
            }
        }
        for (class, family) in &self.families {
            if family.len == 0 {
                let _ = writeln!(out, "\t.reg {} {};", class.decl(), family.prefix);
            } else {
                let _ = writeln!(out, "\t.reg {} {}<{}>;", class.decl(), family.prefix, family.declared());
            }
        }
        out.push('\n');
        out.push_str(&self.body);
        out
    }
}

/// How [`PtxWriter::div_u32_by`] divides an unsigned 32-bit value by a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DivisionByConstant {
    One,
    /// A power of two, `1 << k`.
    Shift(u32),
    /// Any other divisor `d` (Hacker's Delight 10-8, the "add" form, exact for all 32-bit x):
    /// with `l = ceil(log2 d)`, `multiplier = floor(2^32 (2^l - d) / d) + 1`, `shift = l`.
    Magic {
        multiplier: u32,
        shift: u32,
    },
}

impl DivisionByConstant {
    /// The lowering for `divisor` (at least 1).
    pub fn new(divisor: u32) -> Self {
        assert!(divisor > 0, "division by zero in generated code");
        if divisor == 1 {
            return DivisionByConstant::One;
        }
        if divisor.is_power_of_two() {
            return DivisionByConstant::Shift(divisor.trailing_zeros());
        }
        let shift = 32 - (divisor - 1).leading_zeros();
        let d = divisor as u64;
        let multiplier = (((1u64 << 32) * ((1u64 << shift) - d)) / d + 1) as u32;
        DivisionByConstant::Magic { multiplier, shift }
    }

    /// What the emitted instructions compute, in the same 32-bit steps (for tests).
    #[cfg(test)]
    pub fn quotient(self, x: u32) -> u32 {
        match self {
            DivisionByConstant::One => x,
            DivisionByConstant::Shift(k) => x >> k,
            DivisionByConstant::Magic { multiplier, shift } => {
                let t = ((x as u64 * multiplier as u64) >> 32) as u32;
                (((x - t) >> 1) + t) >> (shift - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instructions written for elements come out grouped by element, in the order each
    /// element's were written; instructions for no element (and comments) go out at once,
    /// ahead of them; with `by_element` off, a named element is ignored; outside
    /// `begin_elements` nothing is held back.
    #[test]
    fn element_order_groups_instructions_by_element() {
        let mut w = PtxWriter::default();
        w.ins("before");
        w.begin_elements();
        w.by_element(true);
        for (op, elements) in [("a", [0, 1]), ("b", [0, 1])] {
            w.element(None);
            w.comment(format!("op {op}"));
            w.ins(format!("{op} shared"));
            for i in elements {
                w.element(Some(i));
                w.ins(format!("{op}{i}"));
            }
        }
        w.by_element(false);
        w.element(Some(1));
        w.ins("uniform");
        w.end_elements();
        w.element(Some(0));
        w.ins("after");
        let lines: Vec<&str> = w.body.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "before;",
                "// op a",
                "a shared;",
                "// op b",
                "b shared;",
                "uniform;",
                "a0;",
                "b0;",
                "a1;",
                "b1;",
                "after;"
            ]
        );
    }

    #[test]
    fn division_by_a_constant_is_exact_for_every_divisor_the_generator_uses() {
        // Every divisor up to 1024 (ring slots, tile sizes, chunks per row, warps per split) and
        // dividends at both ends of the range, around each multiple, and pseudo-random ones.
        let mut x: u32 = 0x1234_5678;
        for d in 1..=1024u32 {
            let lowering = DivisionByConstant::new(d);
            let mut dividends = vec![0, 1, d - 1, d, d + 1, u32::MAX, u32::MAX - 1, u32::MAX / d * d];
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                dividends.extend([x, x >> 8, x >> 16]);
            }
            for n in dividends {
                assert_eq!(lowering.quotient(n), n / d, "{n} / {d} with {lowering:?}");
            }
        }
        assert_eq!(DivisionByConstant::new(2), DivisionByConstant::Shift(1));
        assert_eq!(
            DivisionByConstant::new(3),
            DivisionByConstant::Magic { multiplier: 0x5555_5556, shift: 2 }
        );
    }

    #[test]
    fn division_by_a_constant_is_emitted_without_div() {
        let mut w = PtxWriter::default();
        w.div_u32_by("%a", "%a", 2);
        w.rem_u32_by("%b", "%a", 4);
        w.rem_u32_by("%c", "%a", 3);
        let text = w.finish();
        assert!(!text.contains("div.") && !text.contains("rem."), "{text}");
        assert!(text.contains("shr.u32 %a, %a, 1;") && text.contains("and.b32 %b, %a, 3;"), "{text}");
        assert!(text.contains("mul.hi.u32") && text.contains("mul.lo.u32"), "{text}");
    }

    #[test]
    fn shared_registers_are_declared_and_written_once() {
        let mut w = PtxWriter::default();
        // Four elements, two rows of two: elements 0, 1 share register 0, elements 2, 3 share 1.
        let rows = w.shared_family(RegClass::B32, "%row_".into(), vec![0, 0, 1, 1]);
        assert_eq!((rows.at(1), rows.at(2)), ("%row_0".to_string(), "%row_1".to_string()));
        assert_eq!((rows.written(), rows.declared(), rows.len), (vec![0, 2], 2, 4));
        let plain = w.family(RegClass::F32, "%x_".into(), 3);
        assert_eq!((plain.written(), plain.declared()), (vec![0, 1, 2], 3));
        let text = w.finish();
        assert!(text.contains(".reg .b32 %row_<2>;") && text.contains(".reg .f32 %x_<3>;"), "{text}");
    }
}

/// `text` with each non-ASCII character spelled in ASCII: the math signs the compiler's own
/// comments use by name, anything else as `?`.
pub fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            c if c.is_ascii() => out.push(c),
            '·' | '×' => out.push('*'),
            'ᵀ' => out.push_str("^T"),
            '≥' => out.push_str(">="),
            '≤' => out.push_str("<="),
            '≠' => out.push_str("!="),
            '→' => out.push_str("->"),
            '√' => out.push_str("sqrt"),
            '∞' => out.push_str("inf"),
            '—' | '–' => out.push('-'),
            _ => out.push('?'),
        }
    }
    out
}
