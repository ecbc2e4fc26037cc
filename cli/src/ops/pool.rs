//! `berth pool`: pools are checked with their backend's probe before they are saved.

use berth_bdev::PoolConfig;

use super::Berth;
use crate::error::Result;

impl Berth {
    pub fn pool_add(&self, pool: &PoolConfig) -> Result<()> {
        berth_bdev::names::validate_name(&pool.name)?;
        // Open and probe first: a pool that cannot work is never recorded.
        self.backend(pool)?;
        self.store().add_pool(pool)
    }

    pub fn pool_rm(&self, name: &str) -> Result<()> {
        self.store().remove_pool(name)
    }

    pub fn pools(&self) -> Result<Vec<PoolConfig>> {
        self.store().pools()
    }
}
