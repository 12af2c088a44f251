//! Subscription messages encoded once: the server's `Subscribe` stream yields
//! [`EncodedResponse`]s, `SubscribeResponse`s already in wire form, so an event delivered to a
//! thousand subscribers is encoded once and its bytes shared ([`LoggedEvent::encoded`]).
//!
//! `build.rs` generates the server with `SubscribeResponse` mapped to [`EncodedResponse`] and
//! with [`Codec`], which copies the bytes into tonic's buffer through small, bounded buffers so
//! that an idle subscriber holds little memory.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType},
};
use tonic::codec::{BufferSettings, Codec as TonicCodec};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::{
    log::LoggedEvent,
    proto::v1::{self, subscribe_response::Response},
    subscriptions::StreamMessage,
};

/// A `SubscribeResponse` in wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodedResponse {
    /// `SubscribeResponse { event }`, from the event's shared encoding: the field's key and
    /// length are written in front of it as the message is sent, so that the bytes every
    /// subscriber gets are the same ones, never copied into a message of their own.
    Event(Bytes),
    /// Any other message, encoded whole.
    Message(Bytes),
}

/// The key of `SubscribeResponse.event` (field 1, length-delimited).
const EVENT_KEY: u8 = 0x0a;

impl EncodedResponse {
    /// The message carrying a stored event: its shared encoding.
    pub fn event(event: &LoggedEvent) -> Self {
        Self::Event(event.encoded().clone())
    }

    /// Any other message (heartbeats, gaps, assignments), encoded now.
    pub fn message(response: Response) -> Self {
        let message = v1::SubscribeResponse {
            response: Some(response),
        };
        Self::Message(Bytes::from(message.encode_to_vec()))
    }
}

impl From<StreamMessage> for EncodedResponse {
    fn from(message: StreamMessage) -> Self {
        let response = match message {
            StreamMessage::Event(event) => return Self::event(&event),
            StreamMessage::Heartbeat(heartbeat) => Response::Heartbeat(heartbeat),
            StreamMessage::Gap(gap) => Response::Gap(gap),
            StreamMessage::CaughtUp(caught_up) => Response::CaughtUp(caught_up),
            StreamMessage::GroupAssignment(assignment) => Response::GroupAssignment(assignment),
        };
        Self::message(response)
    }
}

impl Default for EncodedResponse {
    fn default() -> Self {
        Self::Message(Bytes::new())
    }
}

impl Message for EncodedResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Event(event) => {
                buf.put_u8(EVENT_KEY);
                prost::encoding::encode_varint(event.len() as u64, buf);
                buf.put_slice(event);
            }
            Self::Message(message) => buf.put_slice(message),
        }
    }

    /// The server never decodes a response; were it asked to, the fields would be skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Event(event) => 1 + prost::length_delimiter_len(event.len()) + event.len(),
            Self::Message(message) => message.len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Bytes tonic's encoder starts with per stream, and how much it gathers before handing a chunk
/// to HTTP/2: a few events, so that a subscriber's stream holds little while it waits.
fn buffer() -> BufferSettings {
    BufferSettings::new(1024, 8 * 1024)
}

/// The server's codec: prost's, with [`buffer`]'s sizes for encoding.
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// The generated server.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/incode.gateway.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_encoding_is_the_subscribe_response_of_the_event() {
        let event = v1::Event {
            sequence: 300,
            id: "x".repeat(200),
            ..v1::Event::default()
        };
        let expected = v1::SubscribeResponse {
            response: Some(Response::Event(event.clone())),
        }
        .encode_to_vec();
        assert_eq!(
            EncodedResponse::event(&LoggedEvent::new(event.clone())).encode_to_vec(),
            expected
        );
        let stored = event.encode_to_vec();
        assert_eq!(
            EncodedResponse::event(&LoggedEvent::with_encoding(event, &stored)).encode_to_vec(),
            expected
        );
    }
}
