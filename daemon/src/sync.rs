//! Lock helpers shared by every module that guards state with a std mutex.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking the data even if a panicking holder poisoned it:
/// every critical section in meshd leaves its data consistent at each step,
/// and one panicked task must not take the rest of the daemon with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
