//! Rows ↔ yrs documents, with no SQL and no I/O: the capture path turns a
//! changed row into an update on its document, the apply path merges a
//! remote update and reads the row back out. See [`doc`] for the layout
//! and why it keeps hot rows small.

pub mod doc;
pub mod hlc;
pub mod value;

pub use doc::{
    client_id_of, decode_update, Change, DocError, RowDoc, RowView, Slot, Stamp, Unwritten,
};
pub use hlc::Hlc;
pub use value::{parse_key, CodecError, Value};
