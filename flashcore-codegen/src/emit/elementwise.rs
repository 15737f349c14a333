//! Elementwise runs written element by element. A chain of elementwise ops over one fragment
//! tile, written op by op, can hold two whole tiles live: in ALiBi's `s + slope · (j − i)` the
//! scores `s` wait while `j − i`, its conversion and its product each fill a second tile (128
//! registers a thread at 128 × 256), and ptxas spilled that (208 bytes). Written element by
//! element, each score's chain ends before the next one's starts: one tile and a few
//! temporaries are live. Same instructions, same registers, another order, so the result is
//! the same bit for bit; runs where op-by-op order holds one tile at a time (`exp2(s − m)`)
//! are left as they are.

use super::*;

/// How an instruction takes part in an elementwise run.
enum RunPart {
    /// Elementwise over a whole fragment tile (every element its own register): written element
    /// by element.
    Tile(Value),
    /// Computes something every element reads (a uniform, a row or column vector, a position):
    /// written before the run's elements. It reads no tile of the run.
    Shared,
    /// Ends the run.
    Outside,
}

impl Emitter<'_> {
    /// How many instructions from `insts[0]` form a run worth writing element by element, if
    /// one starts there: at least two tile ops, and one after the first reads a whole tile that
    /// the tile op just before it did not write (so op-by-op order holds two tiles live).
    pub(super) fn fused_run_len(&self, insts: &[Inst]) -> Option<usize> {
        let RunPart::Tile(first) = self.run_part(&insts[0], &HashSet::new()) else { return None };
        let shape = tile_shape(self.kernel.ty(first));
        let mut tiles: HashSet<Value> = HashSet::new();
        let (mut len, mut end, mut tile_ops) = (0, 0, 0);
        let mut previous: Option<Value> = None;
        let mut holds_two = false;
        for inst in insts {
            match self.run_part(inst, &tiles) {
                RunPart::Tile(dst) if tile_shape(self.kernel.ty(dst)) == shape => {
                    // A whole tile read here but not written by the tile op just before: live
                    // while that op (and any before it) filled another tile.
                    holds_two |= previous.is_some()
                        && inst.op.uses().iter().any(|&v| Some(v) != previous && self.is_whole_tile(v));
                    tiles.insert(dst);
                    previous = Some(dst);
                    tile_ops += 1;
                    len += 1;
                    end = len;
                }
                RunPart::Shared => len += 1,
                RunPart::Tile(_) | RunPart::Outside => break,
            }
        }
        (tile_ops >= 2 && holds_two).then_some(end)
    }

    /// Writes `run` (as [`Emitter::fused_run_len`] found it): the shared values first, then the
    /// tile ops' instructions element by element.
    pub(super) fn fused_run(&mut self, run: &[Inst]) -> Result<(), CodegenError> {
        let names: Vec<String> = run.iter().filter_map(|inst| inst.op.def()).map(|v| self.vname(v)).collect();
        self.w.comment(format!("element by element, so one tile is live at a time: {}", names.join(" ")));
        self.w.begin_elements();
        for inst in run {
            // A tile, or a value shared along a row or a column (its register for a row or
            // column written with the first element that reads it), goes element by element.
            let by_element = inst.op.def().is_some_and(|v| matches!(self.kernel.ty(v), Type::Frag { .. }));
            self.w.by_element(by_element);
            self.inst(inst)?;
        }
        self.w.end_elements();
        Ok(())
    }

    fn run_part(&self, inst: &Inst, tiles: &HashSet<Value>) -> RunPart {
        let elementwise = match &inst.op {
            Op::Binary { .. }
            | Op::Unary { .. }
            | Op::Exp2 { .. }
            | Op::Select { .. }
            | Op::Gather { .. } => true,
            Op::Convert { src, .. } => !self.kernel.ty(*src).elem().is_some_and(|e| e.is_half()),
            Op::Const { .. }
            | Op::IntConst { .. }
            | Op::ScalarParam { .. }
            | Op::DimLen { .. }
            | Op::Position { .. } => return RunPart::Shared,
            _ => false,
        };
        let Some(dst) = inst.op.def() else { return RunPart::Outside };
        if !elementwise {
            return RunPart::Outside;
        }
        let ty = self.kernel.ty(dst);
        if !self.is_whole_tile(dst) {
            let reads_run = inst.op.uses().iter().any(|v| tiles.contains(v));
            return if reads_run { RunPart::Outside } else { RunPart::Shared };
        }
        // A result with registers already (written in place over an operand: `acc · α`, whose
        // rescale may branch around its multiplies) or in 16-bit pairs keeps op-by-op order.
        if self.regs.contains_key(&dst) || ty.elem().is_some_and(|e| e.is_half()) {
            return RunPart::Outside;
        }
        RunPart::Tile(dst)
    }

    /// A fragment tile with a register per element (not one shared along a row or column).
    fn is_whole_tile(&self, v: Value) -> bool {
        matches!(self.kernel.ty(v), Type::Frag { .. }) && !self.one_axis.contains_key(&v)
    }
}

/// A fragment tile's rows and columns (its element type aside: 32-bit and predicate elements
/// alike take one register an element, in the same order).
fn tile_shape(ty: Type) -> Option<(TileDim, TileDim)> {
    match ty {
        Type::Frag { rows, cols, .. } => Some((rows, cols)),
        _ => None,
    }
}
