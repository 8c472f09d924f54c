use dht::sim::{NetworkModel, Simulation};
use dht::{Config, Time};
use std::time::Duration;
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut sim = Simulation::new(1, Config::default(), NetworkModel::default());
    let first = sim.add_node();
    sim.create_ring(first);
    for k in 1..n {
        sim.run_until(Time::ZERO + Duration::from_millis(50 * k as u64));
        let f = sim.add_node();
        sim.join(f, &[0]);
    }
    sim.run_until(Time::ZERO + Duration::from_secs(60));
    println!("members {} correct {}", sim.member_count(), sim.ring_is_correct());
    let mut ids: Vec<(dht::Id, usize)> = (0..n).map(|i| (sim.node(i).me().id, i)).collect();
    ids.sort();
    for (id, i) in &ids {
        let node = sim.node(*i);
        println!("{} #{i} member={} pred={:?} succ={:?}", id.short(), sim.is_member(*i),
            node.predecessor().map(|p| p.id.short().to_string()),
            node.successors().iter().map(|s| s.id.short().to_string()).collect::<Vec<_>>());
        if std::env::var("DUMP").is_ok() { println!("{:#?}", node.counters()); let s = format!("{node:?}"); println!("{}", &s[s.find("phase").unwrap()..][..600]); }
    }
}
#[allow(dead_code)]
fn unused() {}
