//! What a driver keeps to survive a head restart: for every object it made (a task it
//! submitted, a value it put) and may still need, either the object's value or the
//! task that makes it (Ray's owner-side lineage). A restarted head knows nothing of
//! them; the driver tells it again (`ToHead::Resume`).
//!
//! Invariant: an entry lives while this process holds a handle to its object or a
//! kept task takes it as an argument. A task whose value is known here (in its slot)
//! is declared as that value, never run again; its entry is not touched when the
//! value arrives, so results cost the reader of the head's messages nothing here.

use crate::ids::ObjectId;
use crate::protocol::{ObjectLocation, ResumeState, ResumedValue, TaskKind, TaskSpec};
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

/// How an object is made again.
enum Recipe {
    /// Run the task again (its value is not known here). `resumed`: how many head
    /// restarts it has been re-submitted after.
    Task { spec: Arc<TaskSpec>, resumed: u32 },
    /// Its value is in this process's slot for it (a put, or a result received).
    InSlot,
    /// Its value (`Inline` or `Error`; `Nodes`: lost), kept after the handle (and
    /// the slot) went, for the kept tasks that take it. Boxed, so that every entry
    /// stays at 32 bytes.
    Kept(Box<ObjectLocation>),
    /// An actor's handle object (an actor this process created or looked up): the
    /// head keeps actors in its storage, so it is only declared held, never made
    /// again here, and never counted lost here.
    ActorHandle,
}

struct Made {
    /// Order of making: a task's arguments come before it.
    seq: u64,
    recipe: Recipe,
    /// Kept tasks that take it as an argument.
    dependents: u32,
    /// This process holds a handle to it.
    held: bool,
}

/// `location` if it holds the value itself (inline, or an error), so that this
/// process can declare it again.
fn known_here(location: Option<ObjectLocation>) -> Option<ObjectLocation> {
    location.filter(|l| matches!(l, ObjectLocation::Inline(_) | ObjectLocation::Error(_)))
}

/// The objects this process made and may still need.
#[derive(Default)]
pub(super) struct Lineage {
    made: HashMap<ObjectId, Made>,
    next_seq: u64,
}

impl Lineage {
    fn insert(&mut self, id: ObjectId, recipe: Recipe) {
        self.next_seq += 1;
        self.made.insert(
            id,
            Made {
                seq: self.next_seq,
                recipe,
                dependents: 0,
                held: true,
            },
        );
    }

    /// This process submitted `spec` and holds a handle to its result. An actor's
    /// creation is noted as its handle object (the head keeps actors); a function
    /// task or an actor call is kept to send again: the restarted head takes what
    /// the returning nodes have of it, and runs it again only when it is lost (an
    /// actor call then only as the retry its actor's `max_task_retries` allows).
    pub(super) fn submitted(&mut self, spec: Arc<TaskSpec>) {
        if let TaskKind::CreateActor(_) = spec.kind {
            return self.actor_handle(spec.return_id);
        }
        for arg in spec.arg_refs() {
            if let Some(m) = self.made.get_mut(&arg) {
                m.dependents += 1;
            }
        }
        let id = spec.return_id;
        self.insert(id, Recipe::Task { spec, resumed: 0 });
    }

    /// This process holds `id`, an actor's handle object.
    pub(super) fn actor_handle(&mut self, id: ObjectId) {
        self.insert(id, Recipe::ActorHandle);
    }

    /// The actors' handle objects this process holds.
    pub(super) fn actor_handles(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.made
            .iter()
            .filter(|(_, m)| matches!(m.recipe, Recipe::ActorHandle))
            .map(|(id, _)| *id)
    }

    /// This process put `id`, whose value is in its slot.
    pub(super) fn put(&mut self, id: ObjectId) {
        self.insert(id, Recipe::InSlot);
    }

    /// This process's last handle to `id` went, with its slot, which held `value`.
    pub(super) fn dropped(&mut self, id: ObjectId, value: Option<ObjectLocation>) {
        let Some(m) = self.made.get_mut(&id) else {
            return;
        };
        m.held = false;
        if m.dependents > 0 {
            // Kept tasks still take it: a value it has here moves out of the slot
            // (and a task it came from is no longer needed); a put whose value was
            // never here (a large one, on the head's node) has nothing to keep.
            match known_here(value) {
                Some(v) => {
                    let old = std::mem::replace(&mut m.recipe, Recipe::Kept(Box::new(v)));
                    if let Recipe::Task { spec, .. } = old {
                        let mut gone = Vec::new();
                        self.let_go_args(&spec, &mut gone);
                        self.remove(gone);
                    }
                }
                None if matches!(m.recipe, Recipe::InSlot) => {
                    m.recipe = Recipe::Kept(Box::new(ObjectLocation::Nodes(Vec::new())));
                }
                None => {}
            }
            return;
        }
        self.remove(vec![id]);
    }

    /// `spec` no longer needs its arguments: each loses a dependent, and those left
    /// with none and no handle join `gone`.
    fn let_go_args(&mut self, spec: &TaskSpec, gone: &mut Vec<ObjectId>) {
        for arg in spec.arg_refs() {
            if let Some(a) = self.made.get_mut(&arg) {
                a.dependents = a.dependents.saturating_sub(1);
                if a.dependents == 0 && !a.held {
                    gone.push(arg);
                }
            }
        }
    }

    /// Removes `gone` and, transitively, arguments no longer needed by anyone (with
    /// a stack, not recursion: chains can be long).
    fn remove(&mut self, mut gone: Vec<ObjectId>) {
        while let Some(id) = gone.pop() {
            if let Some(Made {
                recipe: Recipe::Task { spec, .. },
                ..
            }) = self.made.remove(&id)
            {
                self.let_go_args(&spec, &mut gone);
            }
        }
    }

    /// How many objects are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.made.len()
    }

    /// What to tell a restarted head (all of [`ResumeState`] but `holds`): every
    /// kept object's value, or its task to run again (counted as one more attempt),
    /// in the order they were made. `slot_value` gives the value in this process's
    /// slot for an object, if it has one.
    pub(super) fn plan(
        &mut self,
        slot_value: impl Fn(ObjectId) -> Option<ObjectLocation>,
    ) -> ResumeState {
        let mut order: Vec<(u64, ObjectId)> =
            self.made.iter().map(|(id, m)| (m.seq, *id)).collect();
        order.sort_unstable();
        let mut plan = ResumeState::default();
        for (_, id) in order {
            let Some(m) = self.made.get_mut(&id) else {
                continue;
            };
            let value = match &mut m.recipe {
                // Its result came: declared as it is, not run again.
                Recipe::Task { spec, resumed } => match known_here(slot_value(id)) {
                    None => {
                        *resumed += 1;
                        plan.tasks.push((spec.clone(), *resumed));
                        None
                    }
                    known => known,
                },
                Recipe::InSlot => match known_here(slot_value(id)) {
                    // Not known here: not made again (a `get` of it reports the loss).
                    None => continue,
                    known => known,
                },
                Recipe::Kept(v) => match known_here(Some((**v).clone())) {
                    None => continue,
                    known => known,
                },
                // The head has it (or says it is gone when asked).
                Recipe::ActorHandle => continue,
            };
            match value {
                Some(ObjectLocation::Inline(value)) => plan.values.push(ResumedValue { id, value }),
                Some(ObjectLocation::Error(e)) => plan.errors.push((id, *e)),
                Some(ObjectLocation::Nodes(_)) | None => {}
            }
            if !m.held {
                plan.unheld.push(id);
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, TaskId};
    use crate::protocol::{TaskArg, TaskSpec};
    use crate::resources::ResourceSet;

    fn task(ret: u128, args: &[u128]) -> TaskSpec {
        TaskSpec {
            task_id: TaskId::random(),
            job: JobId::random(),
            function: "f".into(),
            args: args.iter().map(|a| TaskArg::Ref(ObjectId(*a))).collect(),
            nested_refs: Vec::new(),
            return_id: ObjectId(ret),
            resources: ResourceSet::new(),
            max_retries: 3,
            kind: TaskKind::Function,
            parent: TaskId::DRIVER,
        }
    }

    fn inline(b: u8) -> ObjectLocation {
        ObjectLocation::Inline(vec![b])
    }

    /// The plan's values, as (object, inline bytes).
    fn values(plan: &ResumeState) -> Vec<(u128, Vec<u8>)> {
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        plan.values
            .iter()
            .map(|v| (v.id.0, v.value.clone()))
            .collect()
    }

    fn returns(plan: &ResumeState) -> Vec<(u128, u32)> {
        plan.tasks
            .iter()
            .map(|(s, a)| (s.return_id.0, *a))
            .collect()
    }

    #[test]
    fn a_chain_whose_middle_handles_were_dropped_is_made_again_in_order() {
        // put(1) -> f(1) = 2 -> g(2) = 3; the driver keeps only its handle to 3.
        let mut l = Lineage::default();
        l.put(ObjectId(1));
        l.submitted(Arc::new(task(2, &[1])));
        l.submitted(Arc::new(task(3, &[2])));
        l.dropped(ObjectId(1), Some(inline(7)));
        l.dropped(ObjectId(2), None);
        assert_eq!(l.len(), 3, "3's task needs 2, whose task needs 1");
        let plan = l.plan(|_| None);
        assert_eq!(values(&plan), vec![(1, vec![7])]);
        assert_eq!(returns(&plan), vec![(2, 1), (3, 1)]);
        assert_eq!(plan.unheld, vec![ObjectId(1), ObjectId(2)]);
        // A second restart counts a second attempt.
        assert_eq!(returns(&l.plan(|_| None)), vec![(2, 2), (3, 2)]);
    }

    #[test]
    fn a_result_received_stands_in_for_its_task_and_lets_its_arguments_go() {
        let mut l = Lineage::default();
        l.put(ObjectId(1));
        l.submitted(Arc::new(task(2, &[1])));
        l.submitted(Arc::new(task(3, &[2])));
        l.dropped(ObjectId(1), Some(inline(1)));
        // 2's result came (it is in its slot): declared as it is, not run again.
        let plan = l.plan(|id| (id == ObjectId(2)).then(|| inline(9)));
        assert_eq!(
            returns(&plan),
            vec![(3, 1)],
            "no task whose result is here runs again"
        );
        assert_eq!(values(&plan), vec![(1, vec![1]), (2, vec![9])]);
        // Its handle goes while 3 still needs it: the value is kept, 2's task and
        // with it the put are let go.
        l.dropped(ObjectId(2), Some(inline(9)));
        assert_eq!(l.len(), 2);
        assert_eq!(values(&l.plan(|_| None)), vec![(2, vec![9])]);
        l.dropped(ObjectId(3), None);
        assert_eq!(l.len(), 0, "nothing is kept past its last handle");
    }

    #[test]
    fn a_value_dropped_while_a_kept_task_needs_it_is_kept_and_freed_after() {
        let mut l = Lineage::default();
        l.put(ObjectId(1));
        l.submitted(Arc::new(task(2, &[1])));
        l.dropped(ObjectId(1), Some(inline(5)));
        let plan = l.plan(|_| None);
        assert_eq!(values(&plan), vec![(1, vec![5])]);
        l.dropped(ObjectId(2), None);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn actor_calls_are_sent_again_until_their_result_comes_and_unknown_puts_are_not_declared() {
        let mut l = Lineage::default();
        let call = |ret| {
            let mut call = task(ret, &[]);
            call.kind = TaskKind::ActorCall(crate::ids::ActorId::random());
            Arc::new(call)
        };
        l.submitted(call(2));
        l.submitted(call(4));
        l.put(ObjectId(3));
        assert_eq!(l.len(), 3);
        // The first call's result came; the second's did not.
        let plan = l.plan(|id| (id == ObjectId(2)).then(|| inline(7)));
        assert_eq!(values(&plan), vec![(2, vec![7])]);
        assert_eq!(returns(&plan), vec![(4, 1)]);
        assert!(plan.unheld.is_empty());
    }

    #[test]
    fn an_actor_s_handle_object_is_named_held_never_run_again_and_goes_with_its_handle() {
        let mut l = Lineage::default();
        let mut create = task(4, &[]);
        create.kind = TaskKind::CreateActor(Box::new(crate::protocol::ActorCreation {
            actor: crate::ids::ActorId::random(),
            class: "Counter".into(),
            name: None,
            detached: false,
            max_restarts: 0,
            max_task_retries: 0,
        }));
        l.submitted(Arc::new(create));
        l.actor_handle(ObjectId(5)); // one looked up by name
        let mut handles: Vec<ObjectId> = l.actor_handles().collect();
        handles.sort();
        assert_eq!(handles, vec![ObjectId(4), ObjectId(5)]);
        let plan = l.plan(|_| None);
        assert!(plan.values.is_empty() && plan.tasks.is_empty() && plan.unheld.is_empty());
        l.dropped(ObjectId(4), None);
        l.dropped(ObjectId(5), None);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn an_entry_costs_little_beside_its_task() {
        // A million pending tasks keep a million entries (plus the map's slack).
        assert!(
            std::mem::size_of::<Made>() <= 32,
            "{}",
            std::mem::size_of::<Made>()
        );
    }

    #[test]
    fn a_long_chain_is_let_go_without_recursion() {
        let mut l = Lineage::default();
        l.put(ObjectId(0));
        for i in 1..100_000u128 {
            l.submitted(Arc::new(task(i, &[i - 1])));
            l.dropped(ObjectId(i - 1), None);
        }
        assert_eq!(l.len(), 100_000);
        l.dropped(ObjectId(99_999), None);
        assert_eq!(l.len(), 0);
    }
}
