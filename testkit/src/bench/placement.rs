//! `cascade bench placement`: a simulation of call placement, single
//! threaded, no I/O: regions × edges, many calls, then one edge dies.

use std::collections::HashMap;
use std::time::Instant;

use control_plane::placement::{Edge, Placement, Region};
use uuid::Uuid;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct PlacementOptions {
    /// Regions.
    pub regions: usize,
    /// Edges per region.
    pub edges: usize,
    /// Calls, spread evenly over regions.
    pub calls: usize,
    /// Bounded load: capacity = (1 + slack) × the mean load.
    pub slack: f64,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// What.
    pub metric: String,
    /// Measured.
    pub value: String,
    /// The aim.
    pub aim: String,
}

fn call_id(i: usize) -> Uuid {
    // SplitMix64 twice: well-spread, reproducible ids.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let a = mix(i as u64);
    Uuid::from_u128((u128::from(a) << 64) | u128::from(mix(a)))
}

/// Places every call once; returns each call's edge id (index into the
/// region's edge list) and the loads, and how long it took.
fn place_all(
    placement: &Placement,
    options: &PlacementOptions,
    regions: &[Region],
    only_region: Option<usize>,
) -> (Vec<Option<String>>, HashMap<String, u32>, f64) {
    let mut loads: HashMap<String, u32> = HashMap::new();
    let mut chosen = Vec::with_capacity(options.calls);
    let started = Instant::now();
    for i in 0..options.calls {
        let region = i % options.regions;
        if only_region.is_some_and(|r| r != region) {
            chosen.push(None);
            continue;
        }
        let choice = placement
            .place(call_id(i), &regions[region].name, |e| {
                loads.get(&e.id).copied().unwrap_or(0)
            })
            .map(|c| c.edge.id.clone());
        if let Some(id) = &choice {
            *loads.entry(id.clone()).or_default() += 1;
        }
        chosen.push(choice);
    }
    (chosen, loads, started.elapsed().as_secs_f64())
}

/// The busiest edge's load over the mean load.
fn max_over_mean(loads: &HashMap<String, u32>, mean: f64) -> f64 {
    f64::from(loads.values().copied().max().unwrap_or(0)) / mean
}

/// Runs the simulation.
pub fn run(options: &PlacementOptions) -> Vec<Row> {
    let regions: Vec<Region> = (0..options.regions)
        .map(|i| Region {
            name: format!("r{i:02}"),
            latitude: -60.0 + 120.0 * i as f64 / options.regions as f64,
            longitude: -180.0 + 360.0 * i as f64 / options.regions as f64,
        })
        .collect();
    let calls_per_region = options.calls as f64 / options.regions as f64;
    // A hair below before ceil: 1.1 × 1000 is 1100.0000000000002 in floats.
    let capacity =
        ((1.0 + options.slack) * calls_per_region / options.edges as f64 - 1e-9).ceil() as u32;
    let edges = |capacity: u32, skip: Option<(usize, usize)>| {
        let mut all = Vec::new();
        for r in 0..options.regions {
            for e in 0..options.edges {
                if skip == Some((r, e)) {
                    continue;
                }
                all.push(Edge {
                    id: format!("r{r:02}-e{e:02}"),
                    region: format!("r{r:02}"),
                    capacity,
                    draining: false,
                });
            }
        }
        all
    };
    let mut rows = Vec::new();
    let mut row = |metric: &str, value: String, aim: &str| {
        rows.push(Row {
            metric: metric.to_owned(),
            value,
            aim: aim.to_owned(),
        });
    };

    for (label, cap) in [
        ("without bounded load", u32::MAX / 2),
        ("with bounded load", capacity),
    ] {
        let mut placement = Placement::new(regions.clone());
        placement.set_edges(edges(cap, None));
        let (before, loads, secs) = place_all(&placement, options, &regions, None);
        let worst = (0..options.regions)
            .map(|r| {
                let region_loads: HashMap<String, u32> = loads
                    .iter()
                    .filter(|(id, _)| id.starts_with(&format!("r{r:02}-")))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                max_over_mean(&region_loads, calls_per_region / options.edges as f64)
            })
            .fold(0.0f64, f64::max);
        let unplaced = before.iter().filter(|c| c.is_none()).count();
        row(
            &format!("max/mean edge load, worst region, {label}"),
            format!(
                "{worst:.3}{}",
                if unplaced > 0 {
                    format!(" ({unplaced} unplaced)")
                } else {
                    String::new()
                }
            ),
            if cap == capacity { "≤ 1.10" } else { "" },
        );
        row(
            &format!("placement decisions/s on one core, {label}"),
            format!("{:.0}", options.calls as f64 / secs),
            "≥ 1,000,000",
        );

        // One edge of region 0 dies: place that region's calls again.
        let mut after = Placement::new(regions.clone());
        after.set_edges(edges(cap, Some((0, 7))));
        let (replaced, _, _) = place_all(&after, options, &regions, Some(0));
        let region_calls = (0..options.calls)
            .filter(|i| i % options.regions == 0)
            .count();
        let moved = (0..options.calls)
            .filter(|i| i % options.regions == 0 && before[*i] != replaced[*i])
            .count();
        let share = moved as f64 / region_calls as f64;
        let ideal = 1.0 / options.edges as f64;
        row(
            &format!("calls moved when one edge dies, {label}"),
            format!(
                "{:.2} % ({:.2}× the ideal {:.2} %)",
                share * 100.0,
                share / ideal,
                ideal * 100.0
            ),
            "within 10 % of ideal",
        );

        if cap == capacity {
            // What the control plane does: running calls stay where they
            // are (a join prefers the edge already serving the call), and
            // only the dead edge's calls are placed again, against the
            // survivors' current loads.
            let dead = "r00-e07";
            let mut survivor_loads = loads.clone();
            survivor_loads.remove(dead);
            let mut moved = 0usize;
            let mut unplaced = 0usize;
            for i in (0..options.calls).filter(|i| i % options.regions == 0) {
                if before[i].as_deref() != Some(dead) {
                    continue;
                }
                moved += 1;
                match after.place(call_id(i), &regions[0].name, |e| {
                    survivor_loads.get(&e.id).copied().unwrap_or(0)
                }) {
                    Some(choice) => {
                        *survivor_loads.entry(choice.edge.id.clone()).or_default() += 1;
                    }
                    None => unplaced += 1,
                }
            }
            let share = moved as f64 / region_calls as f64;
            let worst = max_over_mean(
                &survivor_loads
                    .into_iter()
                    .filter(|(id, _)| id.starts_with("r00-"))
                    .collect(),
                calls_per_region / (options.edges - 1) as f64,
            );
            row(
                "calls moved when one edge dies, with bounded load, running calls stay (as deployed)",
                format!(
                    "{:.2} % ({:.2}× the ideal {:.2} %); {unplaced} unplaced; survivors' max/mean {worst:.3}",
                    share * 100.0,
                    share / ideal,
                    ideal * 100.0
                ),
                "within 10 % of ideal",
            );
        }
    }
    rows
}
