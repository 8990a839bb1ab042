//! Generated bindings for the `airssys:component` WIT package (the `component` world), and
//! short names for its shared types. The vocabulary host functions and the actor speak with
//! guests; nothing here decides anything.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "component",
    imports: { default: async },
    exports: { default: async },
});

pub use airssys::component::types::{
    Error as WitError, Message as WitMessage, Origin as WitOrigin, TopicMessage as WitTopicMessage,
};
