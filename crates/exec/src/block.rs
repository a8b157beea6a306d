//! One zeroed, 64-byte-aligned allocation that never moves (an arena or a persistent
//! block). Slices are made from its raw pointer only, so disjoint slices may coexist.

use std::alloc::{self, Layout as AllocLayout};
use std::ptr::NonNull;

use crate::ExecError;

const BLOCK_ALIGN: usize = 64;

#[repr(align(64))]
struct Aligned;

/// One zeroed, 64-byte-aligned allocation that never moves. Slices are made from its raw
/// pointer only, so disjoint slices may coexist.
pub(crate) struct Block {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

// SAFETY: a Block is plain memory owned by one executor; access goes through the executor's
// `&self`/`&mut self` methods.
unsafe impl Send for Block {}

impl Block {
    pub(crate) fn new(len: u64, what: &str) -> Result<Block, ExecError> {
        let len = usize::try_from(len)
            .map_err(|_| ExecError::Layout(format!("{what} of {len} bytes")))?;
        if len == 0 {
            return Ok(Block {
                ptr: NonNull::<Aligned>::dangling().cast(),
                len,
            });
        }
        let layout = AllocLayout::from_size_align(len, BLOCK_ALIGN)
            .map_err(|e| ExecError::Layout(format!("{what} of {len} bytes: {e}")))?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            ExecError::Layout(format!("cannot allocate the {what} of {len} bytes"))
        })?;
        Ok(Block { ptr, len })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `new` with this size and alignment.
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    AllocLayout::from_size_align_unchecked(self.len, BLOCK_ALIGN),
                )
            }
        }
    }
}
