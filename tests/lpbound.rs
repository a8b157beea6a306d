//! The LP lower bound on recomputation (`lowmem_lpbound`). The solver tests run only with
//! `--features lp` (they build HiGHS); the rest check, without HiGHS, the assumptions the
//! bound rests on.

use lowmem::autodiff::{Loss, Optimizer, TrainingGraph, training_step};
use lowmem::plan::PlanOptions;
use lowmem::remat::{Scheme, Step, training_roles};
use lowmem_lpbound::{node_order, originals_order};

fn encoder_step() -> TrainingGraph {
    let g = lowmem::models::transformer_encoder(2, 64, 4, 16, 256, 2, 2);
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    training_step(&g, g.outputs[0], Loss::CrossEntropy, &sgd).expect("training step")
}

fn opts() -> PlanOptions {
    PlanOptions {
        search_time: std::time::Duration::ZERO,
        ..PlanOptions::default()
    }
}

/// The model fixes the order of the original nodes to the store-all rewrite's: every
/// schedule's rewrite must run them in that order.
#[test]
fn every_schedule_runs_the_originals_in_one_order() {
    let tg = encoder_step();
    let order = node_order(&tg);
    assert_eq!(order.len(), tg.graph.nodes.len());
    let step = Step::new(&tg, opts()).expect("stages");
    for scheme in [Scheme::Sqrt, Scheme::Log, Scheme::Revolve] {
        let o = step.run(scheme, None).expect("schedule");
        assert!(o.recomputed_nodes > 0, "{scheme:?} recomputes nothing");
        let got = originals_order(&tg.graph, &o.graph, &o.recomputed).expect("originals");
        assert_eq!(got, order, "{scheme:?}");
    }
}

#[cfg(not(feature = "lp"))]
#[test]
fn without_highs_the_bound_says_how_to_get_it() {
    let tg = encoder_step();
    let roles = training_roles(&tg);
    let e = lowmem_lpbound::lower_bound(&tg, &roles, u64::MAX / 2, &Default::default())
        .expect_err("no solver");
    assert!(e.to_string().contains("--features lp"), "{e}");
}

#[cfg(feature = "lp")]
mod solver {
    use super::*;
    use lowmem_lpbound::{Options, Status, lower_bound, no_remat_peak};

    fn bound(tg: &TrainingGraph, budget: u64) -> lowmem_lpbound::Bound {
        let roles = training_roles(tg);
        let opts = Options {
            time_limit: std::time::Duration::from_secs(120),
            ..Options::default()
        };
        lower_bound(tg, &roles, budget, &opts).expect("bound")
    }

    /// At the model's no-remat peak (and the planned one, at least as large), nothing need be
    /// recomputed.
    #[test]
    fn zero_at_the_no_remat_peak() {
        let tg = encoder_step();
        let roles = training_roles(&tg);
        let peak = no_remat_peak(&tg, &roles, &node_order(&tg)).expect("peak");
        let step = Step::new(&tg, opts()).expect("stages");
        let planned = step.none().peak();
        for b in [peak, planned.max(peak)] {
            let r = bound(&tg, b);
            assert_eq!(r.status, Status::Optimal);
            assert!(r.overhead.expect("bound") < 1e-6, "{r:?}");
        }
    }

    /// Below the peak the bound is positive and never above what a real lowmem schedule
    /// recomputes at the same budget (its planned peak): Chen's sqrt, log and Revolve at
    /// their own peaks, and `optimal` at those budgets.
    #[test]
    fn at_most_a_real_schedule() {
        let tg = encoder_step();
        let roles = training_roles(&tg);
        let peak = no_remat_peak(&tg, &roles, &node_order(&tg)).expect("peak");
        let step = Step::new(&tg, opts()).expect("stages");
        for scheme in [Scheme::Sqrt, Scheme::Log, Scheme::Revolve] {
            let o = step.run(scheme, None).expect("schedule");
            let b = o.peak();
            let r = bound(&tg, b);
            let lb = r.overhead.expect("bound");
            for (name, real) in [
                (scheme.name(), o.recompute_flops),
                (
                    "optimal",
                    step.run(Scheme::Optimal, Some(b))
                        .expect("fits its own peak")
                        .recompute_flops,
                ),
            ] {
                let real = step.overhead(real);
                assert!(
                    lb <= real + 1e-9,
                    "{name} at {b}: LP {lb} > real {real} ({r:?})"
                );
            }
            if b < peak {
                assert!(lb > 0.0, "{scheme:?} at {b} < {peak}: {r:?}");
            }
        }
    }
}
