//! lowmem's test kit (a dev-dependency only): one seeded RNG ([`Rng`]), random checkpointing
//! chains ([`resnet_like`]), the model loader
//! ([`data_dir`], [`model_path`], [`load_model`], ...) and the runner of the `lowmem` binary
//! ([`Cli`], [`lowmem_cli!`]).

mod chains;
mod cli;
mod compare;
mod models;
mod rng;

pub use chains::{ChainCosts, resnet_like};
pub use cli::{Cli, Invocation, Run};
pub use compare::l2_distance;
pub use models::{
    data_dir, example_names, example_path, load, load_example, load_model, model_path,
    try_data_dir, workspace_root, zoo_path,
};
pub use rng::Rng;
