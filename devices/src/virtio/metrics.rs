//! Device counters for the metrics file: each device keeps a plain struct of `u64` counters
//! (cheap to bump on the event loop, copied out under the device lock) and hands them to the VMM
//! as name/value pairs through [`VirtioDevice::metrics`](super::VirtioDevice::metrics).
//!
//! Counters are cumulative since the device was created (a reset keeps them) and saturate
//! instead of overflowing: a counter is never worth a panic.

/// Declares a counters struct whose fields are all `u64`, with `pairs()` listing them by field
/// name, so the names in the metrics file cannot drift from the fields.
macro_rules! device_metrics {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: u64,)*
        }

        impl $name {
            /// The counters as (snake_case name, value), in declaration order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field)),*]
            }
        }
    };
}

/// Adds `n` to a counter, saturating.
pub(super) fn bump(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    device_metrics! {
        /// Two counters.
        pub struct Sample {
            /// The first.
            pub first_count,
            pub second_bytes,
        }
    }

    #[test]
    fn pairs_follow_the_fields_and_counters_saturate() {
        let mut m = Sample::default();
        bump(&mut m.first_count, 2);
        bump(&mut m.second_bytes, u64::MAX);
        bump(&mut m.second_bytes, 1);
        assert_eq!(
            m.pairs(),
            vec![("first_count", 2), ("second_bytes", u64::MAX)]
        );
    }
}
