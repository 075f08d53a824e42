//! kombu's Redis envelope: a [`Message`](celeriac_core::Message) as the JSON
//! object kombu puts in a Redis list.
