use dht::sim::{NetworkModel, Simulation};
use dht::{Config, Time};
use std::time::Duration;
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let ff: u64 = std::env::var("FF").ok().and_then(|s| s.parse().ok()).unwrap_or(1000); let st: u64 = std::env::var("ST").ok().and_then(|s| s.parse().ok()).unwrap_or(1000); let mut sim = Simulation::new(1, Config::default().with_fix_fingers_interval(Duration::from_millis(ff)).with_stabilize_interval(Duration::from_millis(st)), NetworkModel::default());
    let first = sim.add_node();
    sim.create_ring(first);
    for k in 1..n {
        sim.run_until(Time::ZERO + Duration::from_millis(50 * k as u64));
        let f = sim.add_node();
        let b = sim.random_member().unwrap();
        sim.join(f, &[b]);
    }
    for step in 0..40 {
        sim.run_until(sim.now() + Duration::from_secs(5));
        let mut ids: Vec<(dht::Id, usize)> = (0..n).filter(|&i| sim.is_member(i)).map(|i| (sim.node(i).me().id, i)).collect();
        ids.sort();
        let m = ids.len();
        let (mut okp, mut oks) = (0, 0);
        for k in 0..m {
            let node = sim.node(ids[k].1);
            if node.successor().id == ids[(k + 1) % m].0 { oks += 1 } else if step == 39 || std::env::var("V").is_ok() {
                println!("  bad succ #{} {} has {:?} want {} pred {:?}", ids[k].1, ids[k].0.short(), node.successors().iter().map(|s| s.id.short().to_string()).collect::<Vec<_>>(), ids[(k+1)%m].0.short(), node.predecessor().map(|p| p.id.short().to_string()));
            }
            if node.predecessor().map(|p| p.id) == Some(ids[(k + m - 1) % m].0) { okp += 1 }
        }
        let nonmembers: Vec<usize> = (0..n).filter(|&i| !sim.is_member(i)).collect();
        println!("t={:?} members={m} succ_ok={oks} pred_ok={okp} correct={} nonmembers={:?}", sim.now(), sim.ring_is_correct(), &nonmembers[..nonmembers.len().min(5)]);
        if sim.ring_is_correct() && m == n { break; }
    }
}
