use dht::sim::{NetworkModel, Simulation};
use dht::{Config, Time};
use std::time::Duration;
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut sim = Simulation::new(1, Config::default(), NetworkModel::default());
    let first = sim.add_node();
    sim.create_ring(first);
    let mut joined = 1;
    let mut t = Duration::ZERO;
    loop {
        t += Duration::from_millis(10);
        if joined < n && t.as_millis() % 50 == 0 {
            let f = sim.add_node();
            let b = sim.random_member().unwrap();
            sim.join(f, &[b]);
            joined += 1;
        }
        sim.run_until(Time::ZERO + t);
        let r = sim.check_invariants();
        if !r.holds() {
            println!("t={t:?} members={} {:?}", sim.member_count(), r);
            let mut ids: Vec<(dht::Id, usize)> = (0..sim.node_count()).filter(|&i| sim.is_member(i)).map(|i| (sim.node(i).me().id, i)).collect();
            ids.sort();
            for (id, i) in &ids { let node = sim.node(*i); println!("{} #{i} pred={:?} succ={:?}", id.short(), node.predecessor().map(|p| p.id.short().to_string()), node.successors().iter().map(|s| s.id.short().to_string()).collect::<Vec<_>>()); }
            break;
        }
        if t > Duration::from_secs(60) { println!("no violation"); break; }
    }
}
