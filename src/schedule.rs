//! Pictures of a kernel's schedule: each role's synchronization events on a timeline, as text
//! for the terminal and as SVG (what `flashcore schedule` prints and draws).
//!
//! The events are the protocol check's ([`ir::protocol`]): stage fills (async copies) and their
//! landing, reads and writes of stages and channels, cp.async group commits and waits, CTA
//! barriers, and mbarrier arrivals and phase waits, over two work items of `2·stages + 1`
//! iterations. [`ir::timeline`] places them in logical time.
//!
//! ```
//! use flashcore::kernels::attention;
//! use flashcore::Config;
//!
//! let config = Config { load_warps: 1, stages: 2, ..attention::CONFIG };
//! let picture = flashcore::schedule::Picture::of(&attention::ir(&config).unwrap());
//! assert!(picture.text().contains("load (1 warp)"));
//! assert!(picture.svg().starts_with("<svg"));
//! ```

use std::fmt::Write;

use crate::ir;
use ir::protocol::{Event, Part, Place, Schedule};
use ir::timeline::{Mark, Timeline, COPY_LATENCY};

/// Pixels a step of logical time takes in the SVG.
const STEP: f64 = 9.0;

/// A kernel's schedule, played once.
pub struct Picture {
    /// The kernel and its config.
    pub title: String,
    /// The roles' events, as the protocol check sees them.
    pub schedule: Schedule,
    /// When each event ran.
    pub timeline: Timeline,
    /// Pipeline iterations traced per work item.
    pub iterations: u32,
}

impl Picture {
    /// The schedule of `kernel` (the IR after the passes).
    pub fn of(kernel: &ir::Kernel) -> Picture {
        let (schedule, places) = ir::protocol::traced_schedule(kernel);
        let timeline = ir::timeline::run(&schedule, &places);
        Picture {
            title: format!("{} ({})", kernel.name, kernel.config),
            schedule,
            timeline,
            iterations: ir::protocol::traced_iterations(&kernel.config),
        }
    }

    fn lane_title(&self, lane: usize) -> String {
        let l = &self.timeline.lanes[lane];
        format!("{} ({} warp{})", l.role, l.warps, if l.warps == 1 { "" } else { "s" })
    }

    /// What `mark` does, in a few words.
    fn describe(&self, mark: &Mark) -> String {
        let s = &self.schedule;
        match &mark.event {
            Event::Copy { slot, tag } => format!("fill {} ← it {tag}", s.slot_name(*slot)),
            Event::Write { slot, tag } => format!("write {} ← it {tag}", short(&s.slot_name(*slot))),
            Event::Read { slot, tag } => format!("read {} (it {tag})", short(&s.slot_name(*slot))),
            Event::Commit => "commit group".into(),
            Event::WaitGroup(n) => format!("wait_group {n}"),
            Event::CtaBarrier => "bar.sync".into(),
            Event::Arrive { barrier } => match mark.arrival {
                Some(a) => format!("arrive {} #{}", s.barrier_name(*barrier), a.phase),
                None => format!("arrive {}", s.barrier_name(*barrier)),
            },
            Event::AsyncArrive { barrier } => match mark.arrival {
                Some(a) => {
                    format!("arrive.async {} #{} (lands @{})", s.barrier_name(*barrier), a.phase, a.step)
                }
                None => format!("arrive.async {}", s.barrier_name(*barrier)),
            },
            Event::ExpectTx { barrier, bytes } => match mark.arrival {
                Some(a) => format!(
                    "arrive.expect_tx {} #{} ({bytes} B, lands @{})",
                    s.barrier_name(*barrier),
                    a.phase,
                    a.step
                ),
                None => format!("arrive.expect_tx {} ({bytes} B)", s.barrier_name(*barrier)),
            },
            Event::BulkCopy { slot, tag, .. } => format!("tma {} ← it {tag}", s.slot_name(*slot)),
            Event::Wait { barrier, phase } if *phase < 0 => {
                format!("wait {} (free)", s.barrier_name(*barrier))
            }
            Event::Wait { barrier, phase } => format!("wait {} #{phase}", s.barrier_name(*barrier)),
        }
    }

    /// The terminal version: one column per role, time flowing down, a row for each step in
    /// which something happens. A role's part of the work item (`w0 kt=2`) heads its cell when
    /// it changes; `waited N` is how long an event was blocked; `│` marks a role waiting.
    pub fn text(&self) -> String {
        let lanes = &self.timeline.lanes;
        let mut out = String::new();
        let _ = writeln!(out, "schedule of {}", self.title);
        let _ = writeln!(
            out,
            "{} role{}, 2 work items × {} iterations, in logical steps (every event one step; a copy lands {COPY_LATENCY} steps after it is issued)",
            lanes.len(),
            if lanes.len() == 1 { "" } else { "s" },
            self.iterations
        );
        // Per lane: the cell text at each step it acts, and when its copies land.
        let mut cells: Vec<std::collections::BTreeMap<u32, String>> = vec![Default::default(); lanes.len()];
        for (i, lane) in lanes.iter().enumerate() {
            let mut landings: Vec<(u32, String)> = vec![];
            let mut last_place: Option<Place> = None;
            for m in &lane.marks {
                let mut cell = String::new();
                if last_place != Some(m.place) {
                    let _ = write!(cell, "[{}] ", place_name(m.place));
                }
                last_place = Some(m.place);
                cell.push_str(&self.describe(m));
                if m.start > m.reached {
                    let _ = write!(cell, " (waited {})", m.start - m.reached);
                }
                cells[i].insert(m.start, cell);
                if let Event::Copy { slot, .. } | Event::BulkCopy { slot, .. } = m.event {
                    landings.push((
                        m.start + COPY_LATENCY,
                        format!("↳ {} landed", self.schedule.slot_name(slot)),
                    ));
                }
            }
            for (step, note) in landings {
                let cell = cells[i].entry(step).or_default();
                let sep = if cell.is_empty() { "" } else { "  " };
                *cell = format!("{cell}{sep}{note}");
            }
        }
        let widths: Vec<usize> = (0..lanes.len())
            .map(|i| {
                let longest = cells[i].values().map(|c| c.chars().count()).max().unwrap_or(0);
                longest.max(self.lane_title(i).chars().count()) + 2
            })
            .collect();
        let mut header = format!("{:>5}  ", "step");
        for (i, width) in widths.iter().enumerate() {
            let _ = write!(header, "{:<width$}", self.lane_title(i));
        }
        let _ = writeln!(out, "{}", header.trim_end());
        let steps: std::collections::BTreeSet<u32> = cells.iter().flat_map(|c| c.keys().copied()).collect();
        for step in steps {
            let mut row = format!("{step:>5}  ");
            for (i, lane) in lanes.iter().enumerate() {
                let waiting = lane.marks.iter().any(|m| m.reached <= step && step < m.start);
                let cell = match cells[i].get(&step) {
                    Some(c) => c.clone(),
                    None if waiting => "│".into(),
                    None => String::new(),
                };
                let _ = write!(row, "{cell:<width$}", width = widths[i]);
            }
            let _ = writeln!(out, "{}", row.trim_end());
        }
        let _ = writeln!(out, "{:>5}  every role finished", self.timeline.steps);
        if !self.timeline.stalled.is_empty() {
            let _ = writeln!(out, "stalled: {} wait forever", self.timeline.stalled.join(", "));
        }
        out
    }

    /// The picture as an SVG document: one lane per role, time flowing right; lane backgrounds
    /// mark each work item's setup, prologue, steady-state iterations, epilogue and finish; fills
    /// are blue (a bar to where the copy lands), reads green, writes purple, waits red (hatched
    /// while blocked), arrivals triangles, and grey arrows join an mbarrier phase's arrivals to
    /// the waits it releases. Every mark has a tooltip.
    pub fn svg(&self) -> String {
        const LEFT: f64 = 170.0;
        const TOP: f64 = 64.0;
        const LANE: f64 = 76.0;
        let lanes = &self.timeline.lanes;
        let steps = self.timeline.steps + COPY_LATENCY + 2;
        let width = LEFT + steps as f64 * STEP + 20.0;
        let height = TOP + lanes.len() as f64 * LANE + 120.0;
        let x = |step: u32| LEFT + step as f64 * STEP;
        let y = |lane: usize| TOP + lane as f64 * LANE;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="monospace" font-size="11">"##
        );
        let _ = writeln!(
            svg,
            r##"<defs><pattern id="blocked" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#f87171"/></pattern><marker id="head" markerWidth="6" markerHeight="6" refX="5" refY="3" orient="auto"><path d="M0,0 L6,3 L0,6 z" fill="#6b7280"/></marker></defs>"##
        );
        let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="white"/>"##);
        let _ = writeln!(
            svg,
            r##"<text x="10" y="20" font-size="14" font-weight="bold">schedule of {}</text>"##,
            xml(&self.title)
        );
        let _ = writeln!(
            svg,
            r##"<text x="10" y="38">2 work items × {} iterations; logical steps (every event one step, a copy lands {COPY_LATENCY} steps after it is issued)</text>"##,
            self.iterations
        );
        // The step axis.
        for step in (0..steps).step_by(10) {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#e5e7eb"/><text x="{0:.1}" y="{3:.1}" fill="#6b7280" font-size="9">{step}</text>"##,
                x(step),
                TOP - 4.0,
                y(lanes.len()),
                TOP - 8.0
            );
        }
        for (i, lane) in lanes.iter().enumerate() {
            let top = y(i);
            // Part bands, then the lane's label.
            for (place, from, to) in bands(&lane.marks) {
                let _ = writeln!(
                    svg,
                    r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: steps {from}..{to}</title></rect>"##,
                    x(from),
                    top + 2.0,
                    (to - from) as f64 * STEP,
                    LANE - 4.0,
                    part_color(place),
                    xml(&lane.role),
                    place_name(place),
                );
                if (to - from) as f64 * STEP > 56.0 {
                    let _ = writeln!(
                        svg,
                        r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#374151">{}</text>"##,
                        x(from) + 2.0,
                        top + 12.0,
                        place_name(place)
                    );
                }
            }
            let _ = writeln!(
                svg,
                r##"<text x="8" y="{:.1}" font-weight="bold">{}</text><text x="8" y="{:.1}" fill="#6b7280">{} threads</text>"##,
                top + LANE / 2.0,
                xml(&self.lane_title(i)),
                top + LANE / 2.0 + 14.0,
                lane.warps * 32
            );
            for m in &lane.marks {
                self.svg_mark(&mut svg, m, top, &x);
            }
        }
        // Arrows: each arrival to the waits on the phase it counted towards, in other lanes.
        for (i, lane) in lanes.iter().enumerate() {
            for m in &lane.marks {
                let (Event::Arrive { barrier } | Event::AsyncArrive { barrier }, Some(arrival)) =
                    (&m.event, m.arrival)
                else {
                    continue;
                };
                for (j, other) in lanes.iter().enumerate().filter(|(j, _)| *j != i) {
                    let waits = other.marks.iter().filter(|w| {
                        w.event == Event::Wait { barrier: *barrier, phase: arrival.phase as i64 }
                    });
                    for w in waits {
                        let (y1, y2) = if j > i {
                            (y(i) + LANE - 8.0, y(j) + 24.0)
                        } else {
                            (y(i) + 24.0, y(j) + LANE - 8.0)
                        };
                        let _ = writeln!(
                            svg,
                            r##"<line x1="{:.1}" y1="{y1:.1}" x2="{:.1}" y2="{y2:.1}" stroke="#6b7280" stroke-width="0.8" marker-end="url(#head)"><title>{} #{} releases {}</title></line>"##,
                            x(arrival.step) + STEP / 2.0,
                            x(w.start) + STEP / 2.0,
                            xml(&self.schedule.barrier_name(*barrier)),
                            arrival.phase,
                            xml(&other.role)
                        );
                    }
                }
            }
        }
        self.svg_legend(&mut svg, 12.0, y(lanes.len()) + 24.0);
        svg.push_str("</svg>\n");
        svg
    }

    fn svg_mark(&self, svg: &mut String, m: &Mark, top: f64, x: &dyn Fn(u32) -> f64) {
        let tip = xml(&format!(
            "step {}{}: {} [{}]",
            m.start,
            if m.start > m.reached { format!(" (waited from {})", m.reached) } else { String::new() },
            self.describe(m),
            place_name(m.place)
        ));
        let rect = |svg: &mut String, row: f64, color: &str| {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="10" fill="{color}"><title>{tip}</title></rect>"##,
                x(m.start) + 0.5,
                top + row,
                STEP - 1.0
            );
        };
        if m.start > m.reached {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="10" fill="url(#blocked)" opacity="0.6"><title>{tip}</title></rect>"##,
                x(m.reached),
                top + 42.0,
                (m.start - m.reached) as f64 * STEP
            );
        }
        match &m.event {
            Event::Copy { .. } | Event::BulkCopy { .. } => {
                rect(svg, 18.0, "#2563eb");
                let _ = writeln!(
                    svg,
                    r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#93c5fd" stroke-width="2"/>"##,
                    x(m.start + 1),
                    top + 23.0,
                    x(m.start + COPY_LATENCY),
                    top + 23.0
                );
            }
            Event::Read { .. } => rect(svg, 30.0, "#16a34a"),
            Event::Write { .. } => rect(svg, 30.0, "#9333ea"),
            Event::Commit | Event::WaitGroup(_) => rect(svg, 42.0, "#f59e0b"),
            Event::Wait { .. } => rect(svg, 42.0, "#dc2626"),
            Event::CtaBarrier => {
                let _ = writeln!(
                    svg,
                    r##"<rect x="{:.1}" y="{:.1}" width="2" height="{:.1}" fill="black"><title>{tip}</title></rect>"##,
                    x(m.start) + STEP / 2.0 - 1.0,
                    top + 16.0,
                    50.0
                );
            }
            Event::Arrive { .. } | Event::AsyncArrive { .. } | Event::ExpectTx { .. } => {
                let at = m.arrival.map_or(m.start, |a| a.step);
                let fill = if matches!(m.event, Event::Arrive { .. }) { "#111827" } else { "white" };
                if at > m.start {
                    let _ = writeln!(
                        svg,
                        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#111827" stroke-dasharray="2,2"/>"##,
                        x(m.start) + STEP / 2.0,
                        top + 62.0,
                        x(at) + STEP / 2.0,
                        top + 62.0
                    );
                }
                let cx = x(at) + STEP / 2.0;
                let _ = writeln!(
                    svg,
                    r##"<path d="M{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} z" fill="{fill}" stroke="#111827"><title>{tip}</title></path>"##,
                    cx - 4.0,
                    top + 68.0,
                    cx + 4.0,
                    top + 68.0,
                    cx,
                    top + 57.0
                );
            }
        }
    }

    fn svg_legend(&self, svg: &mut String, left: f64, top: f64) {
        let items: [(&str, &str); 8] = [
            ("#2563eb", "stage fill (cp.async), bar: until it lands"),
            ("#16a34a", "read of a stage or channel"),
            ("#9333ea", "write of a channel"),
            ("#dc2626", "mbarrier wait"),
            ("url(#blocked)", "blocked"),
            ("#f59e0b", "cp.async commit / wait_group"),
            ("#111827", "arrive (filled) / arrive.async on landing (hollow)"),
            ("#6b7280", "arrow: an arrival to the wait its phase releases"),
        ];
        for (k, (color, label)) in items.iter().enumerate() {
            let (col, row) = (k % 4, k / 4);
            let (lx, ly) = (left + col as f64 * 440.0, top + row as f64 * 18.0);
            let _ = writeln!(
                svg,
                r##"<rect x="{lx:.1}" y="{:.1}" width="12" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                ly - 9.0,
                lx + 16.0,
                ly,
                xml(label)
            );
        }
        let parts = [
            (Place { work: 0, part: Part::Setup }, "setup"),
            (Place { work: 0, part: Part::Prologue }, "prologue"),
            (Place { work: 0, part: Part::Steady(0) }, "steady state (iterations alternate)"),
            (Place { work: 0, part: Part::Epilogue }, "epilogue"),
            (Place { work: 0, part: Part::Finish }, "finish (merge, store)"),
        ];
        for (k, (place, label)) in parts.iter().enumerate() {
            let (lx, ly) = (left + k as f64 * 352.0, top + 44.0);
            let _ = writeln!(
                svg,
                r##"<rect x="{lx:.1}" y="{:.1}" width="12" height="10" fill="{}" stroke="#9ca3af"/><text x="{:.1}" y="{ly:.1}">{label}</text>"##,
                ly - 9.0,
                part_color(*place),
                lx + 16.0
            );
        }
    }
}

/// Consecutive marks of one place, as (place, first step, step after the last).
fn bands(marks: &[Mark]) -> Vec<(Place, u32, u32)> {
    let mut out: Vec<(Place, u32, u32)> = vec![];
    for m in marks {
        match out.last_mut() {
            Some((place, _, to)) if *place == m.place => *to = m.start + 1,
            _ => out.push((m.place, m.reached, m.start + 1)),
        }
    }
    out
}

fn place_name(place: Place) -> String {
    let part = match place.part {
        Part::Setup => "setup".to_string(),
        Part::Prologue => "prologue".to_string(),
        Part::Steady(kt) => format!("kt={kt}"),
        Part::Epilogue => "epilogue".to_string(),
        Part::Finish => "finish".to_string(),
    };
    format!("w{} {part}", place.work)
}

fn part_color(place: Place) -> &'static str {
    match place.part {
        Part::Setup => "#f3f4f6",
        Part::Prologue => "#dbeafe",
        Part::Steady(kt) if kt % 2 == 0 => "#ecfdf5",
        Part::Steady(_) => "#d1fae5",
        Part::Epilogue => "#fef3c7",
        Part::Finish => "#fce7f3",
    }
}

/// `channel s[0]` → `s[0]`: channels are one slot, their name is enough.
fn short(slot: &str) -> &str {
    slot.strip_prefix("channel ").unwrap_or(slot)
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
