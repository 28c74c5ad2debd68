//! Call placement: which edge node serves a call's participants in a
//! region. Pure data and functions: edges and loads in, a choice out; no
//! clock, no I/O (the registry that feeds it arrives with the calls work).
//!
//! - Each region has a consistent-hash ring (`hashring`, with its fixed
//!   SipHash keys so every replica computes the same ring) of its healthy,
//!   non-draining edges, with virtual nodes in proportion to capacity.
//! - A call's edge is the ring's pick for the call id, so everyone in one
//!   region meets on one edge, and adding or removing an edge moves only
//!   the calls that hash to it.
//! - Bounded load: an edge at capacity is passed over by probing again with
//!   `(call, attempt)` for attempt 1, 2, ... The probe sequence of a call
//!   does not depend on which edges exist, so churn still moves few calls.
//! - A region without a usable edge borrows the nearest region (by great-
//!   circle distance) that has one.

use std::collections::HashMap;

use hashring::HashRing;
use uuid::Uuid;

/// Virtual nodes of an edge of average capacity in its region.
const VNODES_PER_AVERAGE_EDGE: f64 = 160.0;
/// Fewest and most virtual nodes any edge gets.
const VNODES_RANGE: (u32, u32) = (16, 2048);
/// Probes before falling back to a scan for any edge with room.
const MAX_PROBES: u32 = 64;

/// A region, from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Name (`eu-west`).
    pub name: String,
    /// Degrees.
    pub latitude: f64,
    /// Degrees.
    pub longitude: f64,
}

/// An edge node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Node id.
    pub id: String,
    /// Its region's name.
    pub region: String,
    /// Participants it accepts.
    pub capacity: u32,
    /// Leaving: gets no new calls.
    pub draining: bool,
}

/// Where a call's participant goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'a> {
    /// The edge.
    pub edge: &'a Edge,
    /// Whether it is in another region than the one asked for.
    pub borrowed: bool,
}

/// A point of an edge on the ring. Its position hashes the edge's *id*
/// and replica number only, so adding or removing other edges never moves
/// it (an index would shift whenever an edge before it went away).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VirtualNode {
    id: std::sync::Arc<str>,
    replica: u32,
    /// Where the edge is in `RegionRing::edges` (not hashed).
    edge: u32,
}

impl std::hash::Hash for VirtualNode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.replica.hash(state);
    }
}

struct RegionRing {
    ring: HashRing<VirtualNode>,
    edges: Vec<Edge>,
}

/// The placement state of every region.
pub struct Placement {
    regions: Vec<Region>,
    rings: HashMap<String, RegionRing>,
}

impl Placement {
    /// Placement over `regions`, with no edges yet.
    pub fn new(regions: Vec<Region>) -> Self {
        Placement {
            regions,
            rings: HashMap::new(),
        }
    }

    /// Replaces the set of edges. Draining edges and those in unknown
    /// regions take no part. Rebuilds the rings; loads are not part of them
    /// (heartbeats change loads without touching rings).
    pub fn set_edges(&mut self, edges: impl IntoIterator<Item = Edge>) {
        let mut by_region: HashMap<String, Vec<Edge>> = HashMap::new();
        for edge in edges {
            if !edge.draining
                && edge.capacity > 0
                && self.regions.iter().any(|r| r.name == edge.region)
            {
                by_region.entry(edge.region.clone()).or_default().push(edge);
            }
        }
        self.rings = by_region
            .into_iter()
            .map(|(region, mut edges)| {
                // A stable order, so the same set gives the same ring.
                edges.sort_by(|a, b| a.id.cmp(&b.id));
                (region, RegionRing::build(edges))
            })
            .collect();
    }

    /// The edge for a participant of `call` in `region`, given each edge's
    /// current load (participants). `None` when every edge of the region
    /// and of every region it could borrow from is full or absent.
    pub fn place<'a>(
        &'a self,
        call: Uuid,
        region: &str,
        load: impl Fn(&Edge) -> u32,
    ) -> Option<Choice<'a>> {
        if let Some(edge) = self
            .rings
            .get(region)
            .and_then(|ring| ring.place(call, &load))
        {
            return Some(Choice {
                edge,
                borrowed: false,
            });
        }
        let home = self.regions.iter().find(|r| r.name == region)?;
        let mut others: Vec<&Region> = self
            .regions
            .iter()
            .filter(|r| r.name != region && self.rings.contains_key(&r.name))
            .collect();
        others.sort_by(|a, b| distance_km(home, a).total_cmp(&distance_km(home, b)));
        others
            .into_iter()
            .find_map(|r| {
                self.rings
                    .get(&r.name)
                    .and_then(|ring| ring.place(call, &load))
            })
            .map(|edge| Choice {
                edge,
                borrowed: true,
            })
    }

    /// The edges placing into `region` (for tests and the simulation).
    pub fn edges(&self, region: &str) -> &[Edge] {
        self.rings.get(region).map_or(&[], |r| r.edges.as_slice())
    }
}

impl RegionRing {
    fn build(edges: Vec<Edge>) -> Self {
        let mean =
            edges.iter().map(|e| f64::from(e.capacity)).sum::<f64>() / edges.len().max(1) as f64;
        let mut nodes = Vec::new();
        for (index, edge) in edges.iter().enumerate() {
            let share = f64::from(edge.capacity) / mean.max(1.0);
            let replicas = ((share * VNODES_PER_AVERAGE_EDGE).round() as u32)
                .clamp(VNODES_RANGE.0, VNODES_RANGE.1);
            let id: std::sync::Arc<str> = edge.id.as_str().into();
            for replica in 0..replicas {
                nodes.push(VirtualNode {
                    id: id.clone(),
                    replica,
                    edge: index as u32,
                });
            }
        }
        let mut ring = HashRing::new();
        ring.batch_add(nodes);
        RegionRing { ring, edges }
    }

    fn place(&self, call: Uuid, load: &impl Fn(&Edge) -> u32) -> Option<&Edge> {
        let key = call.as_u128();
        for attempt in 0..MAX_PROBES {
            let node = self.ring.get(&(key, attempt))?;
            let edge = &self.edges[node.edge as usize];
            if load(edge) < edge.capacity {
                return Some(edge);
            }
        }
        // Nearly everything is full: the least loaded edge with room.
        self.edges
            .iter()
            .filter(|e| load(e) < e.capacity)
            .min_by_key(|e| u64::from(load(e)) * 1_000_000 / u64::from(e.capacity))
    }
}

/// Great-circle distance (haversine), km.
fn distance_km(a: &Region, b: &Region) -> f64 {
    let (la1, la2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<Region> {
        vec![
            Region {
                name: "eu".into(),
                latitude: 50.1,
                longitude: 8.7,
            },
            Region {
                name: "us".into(),
                latitude: 39.0,
                longitude: -77.5,
            },
            Region {
                name: "uk".into(),
                latitude: 51.5,
                longitude: -0.1,
            },
        ]
    }

    fn edge(id: &str, region: &str, capacity: u32) -> Edge {
        Edge {
            id: id.into(),
            region: region.into(),
            capacity,
            draining: false,
        }
    }

    fn calls(n: u128) -> impl Iterator<Item = Uuid> {
        (0..n).map(|i| Uuid::from_u128(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)))
    }

    fn eu_edges(n: usize) -> Vec<Edge> {
        (0..n)
            .map(|i| edge(&format!("eu-{i}"), "eu", 1_000_000))
            .collect()
    }

    #[test]
    fn the_same_call_lands_on_the_same_edge_whatever_the_order_edges_arrived_in() {
        let mut a = Placement::new(regions());
        let mut b = Placement::new(regions());
        let edges = eu_edges(8);
        a.set_edges(edges.clone());
        b.set_edges(edges.into_iter().rev());
        for call in calls(2_000) {
            let first = a.place(call, "eu", |_| 0).unwrap().edge.id.clone();
            assert_eq!(
                a.place(call, "eu", |_| 5).unwrap().edge.id,
                first,
                "stable per call"
            );
            assert_eq!(
                b.place(call, "eu", |_| 0).unwrap().edge.id,
                first,
                "same on every replica"
            );
        }
    }

    #[test]
    fn removing_one_edge_moves_only_its_calls() {
        let mut placement = Placement::new(regions());
        placement.set_edges(eu_edges(10));
        let before: Vec<String> = calls(20_000)
            .map(|c| placement.place(c, "eu", |_| 0).unwrap().edge.id.clone())
            .collect();
        placement.set_edges(eu_edges(10).into_iter().filter(|e| e.id != "eu-3"));
        let mut moved = 0;
        for (call, old) in calls(20_000).zip(&before) {
            let new = &placement.place(call, "eu", |_| 0).unwrap().edge.id;
            if new != old {
                assert_eq!(old, "eu-3", "a call that was not on the removed edge moved");
                moved += 1;
            }
        }
        let share = f64::from(moved) / 20_000.0;
        assert!((0.06..0.14).contains(&share), "about 1/10 moved: {share}");
    }

    #[test]
    fn bounded_load_keeps_every_edge_within_capacity() {
        let mut placement = Placement::new(regions());
        let edges: Vec<Edge> = (0..10)
            .map(|i| edge(&format!("eu-{i}"), "eu", 110))
            .collect();
        placement.set_edges(edges);
        let mut loads: HashMap<String, u32> = HashMap::new();
        for call in calls(1_000) {
            let id = placement
                .place(call, "eu", |e| loads.get(&e.id).copied().unwrap_or(0))
                .expect("room is left")
                .edge
                .id
                .clone();
            *loads.entry(id).or_default() += 1;
        }
        assert_eq!(loads.values().sum::<u32>(), 1_000);
        assert!(loads.values().all(|l| *l <= 110), "{loads:?}");
        // Completely full: nothing more fits (no region to borrow from).
        let full = |_: &Edge| 110;
        assert!(placement.place(Uuid::from_u128(7), "eu", full).is_none());
    }

    #[test]
    fn capacity_weights_the_share_of_calls() {
        let mut placement = Placement::new(regions());
        placement.set_edges(vec![
            edge("big", "eu", 2_000_000),
            edge("small", "eu", 1_000_000),
        ]);
        let big = calls(30_000)
            .filter(|c| placement.place(*c, "eu", |_| 0).unwrap().edge.id == "big")
            .count() as f64
            / 30_000.0;
        assert!(
            (0.60..0.73).contains(&big),
            "about 2/3 on the edge twice as large: {big}"
        );
    }

    #[test]
    fn draining_edges_get_nothing_and_empty_regions_borrow_the_nearest() {
        let mut placement = Placement::new(regions());
        let mut draining = edge("eu-1", "eu", 100);
        draining.draining = true;
        placement.set_edges(vec![
            draining,
            edge("us-1", "us", 100),
            edge("uk-1", "uk", 100),
        ]);
        let choice = placement.place(Uuid::from_u128(1), "eu", |_| 0).unwrap();
        assert_eq!(
            (choice.edge.id.as_str(), choice.borrowed),
            ("uk-1", true),
            "London is nearer Frankfurt than Virginia"
        );
        // The nearest one full: the next nearest.
        let choice = placement
            .place(Uuid::from_u128(1), "eu", |e| {
                if e.id == "uk-1" { 100 } else { 0 }
            })
            .unwrap();
        assert_eq!(choice.edge.id, "us-1");
        assert!(placement.place(Uuid::from_u128(1), "mars", |_| 0).is_none());
    }
}
