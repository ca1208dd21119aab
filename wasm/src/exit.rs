//! Exit codes as Blockless defines them (docs/WASM.md has the table): what a trap, a limit or a
//! config error ends the run with. A module's own `proc_exit(n)` passes n through.

use wasmtime::Trap;

use crate::limits::MemoryOverLimit;

pub const OK: u8 = 0;
pub const OUT_OF_FUEL: u8 = 1;
pub const STACK_OVERFLOW: u8 = 2;
pub const MEMORY_OUT_OF_BOUNDS: u8 = 3;
pub const MISALIGNED_ACCESS: u8 = 4;
pub const TABLE_OUT_OF_BOUNDS: u8 = 5;
pub const UNINITIALIZED_ELEMENT: u8 = 6;
pub const SIGNATURE_MISMATCH: u8 = 7;
pub const INTEGER_OVERFLOW: u8 = 8;
pub const DIVIDE_BY_ZERO: u8 = 9;
pub const BAD_CONVERSION: u8 = 10;
pub const UNREACHABLE: u8 = 11;
pub const INTERRUPT: u8 = 12;
pub const ADAPTER_ERROR: u8 = 13;
pub const TIMEOUT: u8 = 15;
pub const MEMORY_OVER_LIMIT: u8 = 16;
pub const CONFIG_ERROR: u8 = 128;
pub const UNKNOWN: u8 = 255;

/// The exit code of a trap.
pub fn of_trap(trap: Trap) -> u8 {
    match trap {
        Trap::OutOfFuel => OUT_OF_FUEL,
        Trap::StackOverflow => STACK_OVERFLOW,
        Trap::MemoryOutOfBounds => MEMORY_OUT_OF_BOUNDS,
        Trap::HeapMisaligned => MISALIGNED_ACCESS,
        Trap::TableOutOfBounds => TABLE_OUT_OF_BOUNDS,
        Trap::IndirectCallToNull => UNINITIALIZED_ELEMENT,
        Trap::BadSignature => SIGNATURE_MISMATCH,
        Trap::IntegerOverflow => INTEGER_OVERFLOW,
        Trap::IntegerDivisionByZero => DIVIDE_BY_ZERO,
        Trap::BadConversionToInteger => BAD_CONVERSION,
        Trap::UnreachableCodeReached => UNREACHABLE,
        Trap::Interrupt => INTERRUPT,
        // What wasmtime 28 called AlwaysTrapAdapter, and the checks of the component model's
        // fused adapters.
        Trap::CannotEnterComponent
        | Trap::CannotLeaveComponent
        | Trap::InvalidChar
        | Trap::StringOutOfBounds
        | Trap::ListOutOfBounds
        | Trap::InvalidDiscriminant
        | Trap::UnalignedPointer => ADAPTER_ERROR,
        _ => UNKNOWN,
    }
}

/// What ended a run that did not return normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub code: u8,
    /// One line for the user; none for a module's own `proc_exit`.
    pub message: Option<String>,
}

/// The exit code and message of an error from instantiating or running a module;
/// `timed_out` says whether the wall-time deadline (which interrupts through the epoch) passed.
pub fn of_error(error: &wasmtime::Error, timed_out: bool) -> Ending {
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Ending {
            code: u8::try_from(exit.0).unwrap_or(UNKNOWN),
            message: None,
        };
    }
    if let Some(over) = error.downcast_ref::<MemoryOverLimit>() {
        return Ending {
            code: MEMORY_OVER_LIMIT,
            message: Some(over.to_string()),
        };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        let code = match (trap, timed_out) {
            (Trap::Interrupt, true) => TIMEOUT,
            (trap, _) => of_trap(*trap),
        };
        let message = match code {
            TIMEOUT => "the module ran past its wall-time limit".to_string(),
            OUT_OF_FUEL => "the module ran out of fuel".to_string(),
            _ => format!("wasm trap: {trap}"),
        };
        return Ending {
            code,
            message: Some(message),
        };
    }
    Ending {
        code: UNKNOWN,
        message: Some(format!("{error:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traps_map_to_blockless_codes() {
        let table = [
            (Trap::OutOfFuel, 1),
            (Trap::StackOverflow, 2),
            (Trap::MemoryOutOfBounds, 3),
            (Trap::HeapMisaligned, 4),
            (Trap::TableOutOfBounds, 5),
            (Trap::IndirectCallToNull, 6),
            (Trap::BadSignature, 7),
            (Trap::IntegerOverflow, 8),
            (Trap::IntegerDivisionByZero, 9),
            (Trap::BadConversionToInteger, 10),
            (Trap::UnreachableCodeReached, 11),
            (Trap::Interrupt, 12),
            (Trap::CannotEnterComponent, 13),
            (Trap::NullReference, 255),
        ];
        for (trap, code) in table {
            assert_eq!(of_trap(trap), code, "{trap:?}");
        }
    }

    #[test]
    fn an_interrupt_past_the_deadline_is_a_timeout() {
        let e = wasmtime::Error::from(Trap::Interrupt);
        assert_eq!(of_error(&e, true).code, TIMEOUT);
        assert_eq!(of_error(&e, false).code, INTERRUPT);
        let e = wasmtime::Error::from(wasmtime_wasi::I32Exit(42));
        assert_eq!(
            of_error(&e, false),
            Ending {
                code: 42,
                message: None
            }
        );
        let e = wasmtime::Error::msg("host failure");
        assert_eq!(of_error(&e, false).code, UNKNOWN);
    }
}
