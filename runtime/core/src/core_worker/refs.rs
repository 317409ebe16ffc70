//! Finding the references inside a value as it is encoded.
//!
//! `ObjectRef`'s `Serialize` calls [`note_nested`]; [`collect_nested`] runs an encoder
//! and returns what it noted, so the object can be declared as holding them.

use crate::ids::ObjectId;
use std::cell::RefCell;

thread_local! {
    static NESTED: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
}

/// Called by `ObjectRef`'s serializer.
pub fn note_nested(id: ObjectId) {
    NESTED.with(|n| {
        if let Some(list) = n.borrow_mut().as_mut() {
            list.push(id);
        }
    });
}

/// Runs `encode` and returns its result with the references it serialized.
pub fn collect_nested<R>(encode: impl FnOnce() -> R) -> (R, Vec<ObjectId>) {
    let outer = NESTED.with(|n| n.borrow_mut().replace(Vec::new()));
    let result = encode();
    let mut found = NESTED
        .with(|n| std::mem::replace(&mut *n.borrow_mut(), outer))
        .unwrap_or_default();
    found.sort();
    found.dedup();
    (result, found)
}
