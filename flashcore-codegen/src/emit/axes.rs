//! Fragment values that vary along one axis of their tile only: a row position, a key
//! position, a table read at one of them, arithmetic on those and uniforms. Such a value is the
//! same in every element of a row (or column), so it gets one register per row (or column) a
//! lane holds instead of one per element ([`RegFamily`]'s shared slots), and elementwise ops
//! compute it once per register: ALiBi's `q + (SK − S)` costs one op per row, not per score.

use super::*;

/// Whether a value varies along the rows and along the columns of its tile.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Varies {
    rows: bool,
    cols: bool,
}

const EVERYWHERE: Varies = Varies { rows: true, cols: true };

/// The fragment values that vary along one axis only, with that axis. Elementwise ops
/// (`Binary`, `Unary`, `Convert`, `Select`, `Gather`, `Exp2`) vary where their operands do;
/// every other op's result, every mutable value and every value defined more than once (a
/// channel's copy in another role) varies everywhere.
pub(super) fn one_axis_values(kernel: &Kernel) -> HashMap<Value, TileAxis> {
    let mut varies: HashMap<Value, Varies> = HashMap::new();
    kernel.walk(&mut |inst| {
        let Some(dst) = inst.op.def() else { return };
        if !matches!(kernel.ty(dst), Type::Frag { .. }) || kernel.value(dst).mutable {
            return;
        }
        if varies.contains_key(&dst) {
            varies.insert(dst, EVERYWHERE);
            return;
        }
        let of = |v: Value| match kernel.ty(v) {
            t if t.is_uniform() => Varies { rows: false, cols: false },
            Type::Row { .. } => Varies { rows: true, cols: false },
            Type::Frag { .. } => varies.get(&v).copied().unwrap_or(EVERYWHERE),
            _ => EVERYWHERE,
        };
        let result = match &inst.op {
            Op::Position { axis: TileAxis::Rows, .. } => Varies { rows: true, cols: false },
            Op::Position { axis: TileAxis::Cols, .. } => Varies { rows: false, cols: true },
            Op::Binary { .. }
            | Op::Unary { .. }
            | Op::Convert { .. }
            | Op::Select { .. }
            | Op::Gather { .. }
            | Op::Exp2 { .. }
            | Op::Exp2Scaled { .. } => {
                inst.op.uses().into_iter().fold(Varies { rows: false, cols: false }, |a, v| {
                    let b = of(v);
                    Varies { rows: a.rows || b.rows, cols: a.cols || b.cols }
                })
            }
            _ => EVERYWHERE,
        };
        varies.insert(dst, result);
    });
    varies
        .into_iter()
        .filter_map(|(v, d)| match (d.rows, d.cols) {
            (true, false) => Some((v, TileAxis::Rows)),
            (false, true) => Some((v, TileAxis::Cols)),
            _ => None,
        })
        .collect()
}

impl Emitter<'_> {
    /// The register of each element of fragment type `ty` for a value that varies along `axis`
    /// only: elements of one row (or column) share one (`None` for a type whose registers are
    /// not one per accumulator element).
    pub(super) fn one_axis_slots(&self, ty: Type, axis: TileAxis) -> Option<Vec<usize>> {
        let Type::Frag { cols, elem: Elem::F32 | Elem::I32 | Elem::Bool, .. } = ty else { return None };
        let len = layout::register_count(&self.cfg, &ty)?;
        let shape = frag_shape(&self.cfg, cols, Elem::F32);
        let mut slots = vec![usize::MAX; len];
        let mut keys: Vec<usize> = vec![];
        for (reg, row_offset, col_offset) in shape.acc_elements() {
            let key = if axis == TileAxis::Rows { row_offset } else { col_offset };
            let slot = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                keys.push(key);
                keys.len() - 1
            });
            *slots.get_mut(reg)? = slot;
        }
        slots.iter().all(|s| *s != usize::MAX).then_some(slots)
    }
}
