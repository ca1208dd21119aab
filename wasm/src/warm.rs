//! Repeated runs of one module in one process (a warm pool's building block): the module
//! compiled once, its imports resolved once (`InstancePre`), instances taken from wasmtime's
//! pooling allocator with copy-on-write memory images, so that each new instance costs a few
//! page-table updates rather than a compile, a link and a memory copy.

use std::path::Path;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, InstancePre, Store};
use wasmtime_wasi::WasiCtxBuilder;

use crate::limits::MemoryLimiter;
use crate::run::{self, State};

/// Instances that may be alive at once.
const POOL_INSTANCES: u32 = 64;

/// A module ready to be instantiated again and again.
pub struct Warm {
    engine: Engine,
    pre: InstancePre<State>,
}

impl Warm {
    /// Compiles `module` for a pooling engine and resolves its imports (WASI preview 1 and
    /// `blockless_cgi`).
    pub fn new(module: &Path) -> wasmtime::Result<Warm> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(true);
        let engine = Engine::new(&config)?;
        let module = wasmtime::Module::from_file(&engine, module)?;
        let pre = run::linker(&engine)?.instantiate_pre(&module)?;
        Ok(Warm { engine, pre })
    }

    /// One fresh instance (its own store and WASI context), dropped at once.
    pub fn instantiate(&self) -> wasmtime::Result<()> {
        let mut store = Store::new(
            &self.engine,
            State {
                wasi: WasiCtxBuilder::new().build_p1(),
                limiter: MemoryLimiter { limit: None },
                cgi: None,
            },
        );
        self.pre.instantiate(&mut store)?;
        Ok(())
    }
}
