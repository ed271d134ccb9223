//! The OpenAI-compatible API surface: types, errors, strict JSON parsing
//! and request validation.

pub mod error;
pub mod json;
pub mod responses;
pub mod tools;
pub mod types;
pub mod validate;

pub use error::ApiError;
