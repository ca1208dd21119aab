//! The API socket server (placeholder).
