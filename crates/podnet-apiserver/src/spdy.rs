//! SPDY/3.1, the server side, as far as Kubernetes streaming needs it.
//!
//! kubectl before 1.30 speaks SPDY for `exec` and `attach`, kubectl up to
//! 1.30 for `port-forward`, and later kubectl tunnels the same SPDY frames
//! inside a WebSocket for `port-forward` (subprotocol
//! `SPDY/3.1+portforward.k8s.io`). No maintained Rust crate serves SPDY, so
//! this is a small one: frames (draft 3: control frames with compressed
//! header blocks, data frames), and a [`serve`] loop that accepts the
//! client's streams, answers each with `SYN_REPLY`, echoes `PING`s and hands
//! the streams out. Flow control (`WINDOW_UPDATE`) is ignored, as the Go
//! implementation Kubernetes uses does.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The `Upgrade` token of a SPDY request.
pub const UPGRADE: &str = "SPDY/3.1";
/// The WebSocket subprotocol prefix of SPDY tunnelled in a WebSocket.
pub const WS_TUNNEL_PREFIX: &str = "SPDY/3.1+";
/// The largest data frame sent (the length field has 24 bits).
const MAX_DATA: usize = 32 * 1024;
/// The largest frame accepted: SPDY peers send far less.
const MAX_FRAME: usize = 1 << 24;

/// A SPDY failure: the connection is ended.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A frame does not parse.
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    /// A header block does not (de)compress.
    #[error("SPDY header compression: {0}")]
    Zlib(String),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Header names and values (names lower case, as SPDY sends them).
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (case-insensitive).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new stream from the peer.
    SynStream {
        /// Stream id (odd from a client).
        id: u32,
        /// The stream this one is associated with, or 0.
        associated: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// The sender half-closes at once.
        fin: bool,
        /// The receiver may not send.
        unidirectional: bool,
        /// The stream's headers.
        headers: Headers,
    },
    /// The answer to a `SynStream`.
    SynReply {
        /// Stream id.
        id: u32,
        /// The sender half-closes at once.
        fin: bool,
        /// Reply headers.
        headers: Headers,
    },
    /// A stream ended abnormally.
    RstStream {
        /// Stream id.
        id: u32,
        /// Status code (5 cancel, ...).
        status: u32,
    },
    /// Connection settings (flags, id, value).
    Settings(Vec<(u8, u32, u32)>),
    /// A liveness probe, echoed by the side that did not start it.
    Ping(u32),
    /// The sender takes no new streams.
    GoAway {
        /// The last stream the sender accepted.
        last: u32,
        /// 0 ok, 1 protocol error, 2 internal error.
        status: u32,
    },
    /// More headers on a stream.
    Headers {
        /// Stream id.
        id: u32,
        /// The sender half-closes.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow control credit.
    WindowUpdate {
        /// Stream id.
        id: u32,
        /// Bytes added to the window.
        delta: u32,
    },
    /// Bytes on a stream.
    Data {
        /// Stream id.
        id: u32,
        /// The sender half-closes after these bytes.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
    /// A control frame type this module does not know (ignored).
    Unknown(u16),
}

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// The zlib dictionary of SPDY/3 header blocks (draft 3, section 2.6.10.1):
/// length-prefixed common header names and values, then common text.
pub fn dictionary() -> &'static [u8] {
    static DICT: LazyLock<Vec<u8>> = LazyLock::new(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    });
    &DICT
}

/// Reads frames: one per connection, as the header blocks of a direction
/// share one zlib stream.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SpdyError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(SpdyError::Malformed("short frame"))
}

impl Decoder {
    /// The next whole frame in `buf` (consumed), or None until more bytes come.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32_at(buf, 4)? & 0x00ff_ffff) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::Malformed("frame too large"));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let body = buf.split_to(len).freeze();
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                id: first & 0x7fff_ffff,
                fin,
                data: body,
            }));
        }
        let kind = (first & 0xffff) as u16;
        let id = |at| u32_at(&body, at).map(|v| v & 0x7fff_ffff);
        Ok(Some(match kind {
            1 => {
                if body.len() < 10 {
                    return Err(SpdyError::Malformed("short SYN_STREAM"));
                }
                Frame::SynStream {
                    id: id(0)?,
                    associated: id(4)?,
                    priority: body[8] >> 5,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.headers(&body[10..])?,
                }
            }
            2 => Frame::SynReply {
                id: id(0)?,
                fin,
                headers: self.headers(body.get(4..).unwrap_or_default())?,
            },
            3 => Frame::RstStream {
                id: id(0)?,
                status: u32_at(&body, 4)?,
            },
            4 => {
                let n = u32_at(&body, 0)? as usize;
                let mut v = Vec::new();
                for i in 0..n.min(body.len() / 8) {
                    let at = 4 + i * 8;
                    let w = u32_at(&body, at)?;
                    v.push(((w >> 24) as u8, w & 0x00ff_ffff, u32_at(&body, at + 4)?));
                }
                Frame::Settings(v)
            }
            6 => Frame::Ping(u32_at(&body, 0)?),
            7 => Frame::GoAway {
                last: id(0)?,
                status: u32_at(&body, 4).unwrap_or(0),
            },
            8 => Frame::Headers {
                id: id(0)?,
                fin,
                headers: self.headers(body.get(4..).unwrap_or_default())?,
            },
            9 => Frame::WindowUpdate {
                id: id(0)?,
                delta: u32_at(&body, 4)? & 0x7fff_ffff,
            },
            k => Frame::Unknown(k),
        }))
    }

    /// Inflates and parses one header block.
    fn headers(&mut self, mut input: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        while !input.is_empty() {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.inflate.total_in();
            let r = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match r {
                Ok(Status::Ok | Status::BufError) if used == 0 && out.len() < out.capacity() => {
                    return Err(SpdyError::Zlib("header block stalled".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Zlib(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Zlib(e.to_string())),
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(b: &[u8]) -> Result<Headers, SpdyError> {
    let mut b = b;
    let take = |b: &mut &[u8]| -> Result<String, SpdyError> {
        if b.len() < 4 {
            return Err(SpdyError::Malformed("short header block"));
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(SpdyError::Malformed("short header block"));
        }
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        Ok(s)
    };
    if b.len() < 4 {
        return Err(SpdyError::Malformed("short header block"));
    }
    let n = b.get_u32() as usize;
    let mut h = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        h.push((k.to_ascii_lowercase(), v));
    }
    Ok(h)
}

/// Writes frames: one per connection (its zlib stream spans the connection).
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Self { deflate }
    }
}

impl Encoder {
    /// Appends `f` to `out`.
    pub fn encode(&mut self, f: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]| {
            out.extend_from_slice(&(0x8003_0000u32 | kind as u32).to_be_bytes());
            out.extend_from_slice(&((flags as u32) << 24 | body.len() as u32).to_be_bytes());
            out.extend_from_slice(body);
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match f {
            Frame::Data { id, fin, data } => {
                out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(
                    &((fin_flag(*fin) as u32) << 24 | data.len() as u32).to_be_bytes(),
                );
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                id,
                associated,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&id.to_be_bytes());
                body.extend_from_slice(&associated.to_be_bytes());
                body.extend_from_slice(&[priority << 5, 0]);
                self.compress_headers(headers, &mut body)?;
                let flags = fin_flag(*fin)
                    | if *unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                control(out, 1, flags, &body);
            }
            Frame::SynReply { id, fin, headers } | Frame::Headers { id, fin, headers } => {
                let mut body = id.to_be_bytes().to_vec();
                self.compress_headers(headers, &mut body)?;
                let kind = if matches!(f, Frame::SynReply { .. }) {
                    2
                } else {
                    8
                };
                control(out, kind, fin_flag(*fin), &body);
            }
            Frame::RstStream { id, status } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, 3, 0, &body);
            }
            Frame::Settings(entries) => {
                let mut body = (entries.len() as u32).to_be_bytes().to_vec();
                for (flags, id, value) in entries {
                    body.extend_from_slice(&((*flags as u32) << 24 | id).to_be_bytes());
                    body.extend_from_slice(&value.to_be_bytes());
                }
                control(out, 4, 0, &body);
            }
            Frame::Ping(id) => control(out, 6, 0, &id.to_be_bytes()),
            Frame::GoAway { last, status } => {
                let mut body = last.to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, 7, 0, &body);
            }
            Frame::WindowUpdate { id, delta } => {
                let mut body = id.to_be_bytes().to_vec();
                body.extend_from_slice(&delta.to_be_bytes());
                control(out, 9, 0, &body);
            }
            Frame::Unknown(_) => {}
        }
        Ok(())
    }

    fn compress_headers(&mut self, h: &Headers, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let mut raw = (h.len() as u32).to_be_bytes().to_vec();
        for (k, v) in h {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut input = &raw[..];
        loop {
            out.reserve(raw.len() + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            // A sync flush is complete once input is used and space was left.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// A stream the client opened.
pub struct Stream {
    /// Its id.
    pub id: u32,
    /// The headers it was opened with (`streamtype`, `port`, `requestid`...).
    pub headers: Headers,
    /// Bytes the client sends on it; ends at its FIN or reset.
    pub data: mpsc::Receiver<Bytes>,
    /// Writes back on it.
    pub writer: StreamWriter,
}

impl Stream {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

enum Out {
    Frame(Frame),
    Shutdown,
}

/// Sends on one stream; clones share the connection.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

/// The connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("SPDY connection closed")]
pub struct Closed;

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB).
    pub async fn write(&self, data: Bytes) -> Result<(), Closed> {
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA));
            self.send(Frame::Data {
                id: self.id,
                fin: false,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes: no more bytes from this side.
    pub async fn close(&self) -> Result<(), Closed> {
        self.send(Frame::Data {
            id: self.id,
            fin: true,
            data: Bytes::new(),
        })
        .await
    }

    /// Ends the stream abnormally (cancel).
    pub async fn reset(&self) -> Result<(), Closed> {
        self.send(Frame::RstStream {
            id: self.id,
            status: 5,
        })
        .await
    }

    async fn send(&self, f: Frame) -> Result<(), Closed> {
        self.out.send(Out::Frame(f)).await.map_err(|_| Closed)
    }
}

/// Ends a served connection from the server side.
#[derive(Clone)]
pub struct Control {
    out: mpsc::Sender<Out>,
}

impl Control {
    /// Sends GOAWAY, then closes the connection once what is queued is sent.
    pub async fn shutdown(&self) {
        let _ = self
            .out
            .send(Out::Frame(Frame::GoAway { last: 0, status: 0 }))
            .await;
        let _ = self.out.send(Out::Shutdown).await;
    }
}

/// Serves SPDY on `io` (the upgraded connection): returns the streams the
/// client opens, each already answered with `SYN_REPLY`, and a [`Control`].
/// The incoming channel ends when the client goes away.
pub fn serve<IO>(io: IO) -> (mpsc::Receiver<Stream>, Control)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(256);
    let (in_tx, in_rx) = mpsc::channel::<Stream>(16);
    tokio::spawn(async move {
        let mut enc = Encoder::default();
        let mut buf = Vec::with_capacity(MAX_DATA + 64);
        while let Some(o) = out_rx.recv().await {
            let Out::Frame(f) = o else { break };
            buf.clear();
            if let Err(e) = enc.encode(&f, &mut buf) {
                tracing::debug!(error = %e, "spdy encode");
                break;
            }
            // Batch what is already queued into one write.
            while buf.len() < MAX_DATA {
                match out_rx.try_recv() {
                    Ok(Out::Frame(f)) => {
                        if enc.encode(&f, &mut buf).is_err() {
                            break;
                        }
                    }
                    Ok(Out::Shutdown) => {
                        let _ = wr.write_all(&buf).await;
                        let _ = wr.shutdown().await;
                        return;
                    }
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let out = out_tx.clone();
    tokio::spawn(async move {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
        'conn: loop {
            let frame = loop {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "spdy read");
                        break 'conn;
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break 'conn,
                    Ok(_) => {}
                }
            };
            match frame {
                Frame::SynStream {
                    id, headers, fin, ..
                } => {
                    let reply = Frame::SynReply {
                        id,
                        fin: false,
                        headers: Vec::new(),
                    };
                    if out.send(Out::Frame(reply)).await.is_err() {
                        break;
                    }
                    let (tx, rx) = mpsc::channel(64);
                    if !fin {
                        streams.insert(id, tx);
                    }
                    let s = Stream {
                        id,
                        headers,
                        data: rx,
                        writer: StreamWriter {
                            id,
                            out: out.clone(),
                        },
                    };
                    if in_tx.send(s).await.is_err() {
                        break;
                    }
                }
                Frame::Data { id, fin, data } => {
                    if let Some(tx) = streams.get(&id)
                        && !data.is_empty()
                    {
                        let _ = tx.send(data).await;
                    }
                    if fin {
                        streams.remove(&id);
                    }
                }
                Frame::RstStream { id, .. } => {
                    streams.remove(&id);
                }
                Frame::Ping(n) => {
                    // Ours would be even; a client's odd one is echoed.
                    let echoed = n % 2 == 0 || out.send(Out::Frame(Frame::Ping(n))).await.is_ok();
                    if !echoed {
                        break;
                    }
                }
                Frame::GoAway { .. } => break,
                Frame::Headers { id, fin: true, .. } => {
                    streams.remove(&id);
                }
                _ => {}
            }
        }
    });
    (in_rx, Control { out: out_tx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_drafts() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // zlib's Adler-32 of the dictionary, as a compressed SYN_STREAM names it.
        let (mut a, mut b) = (1u32, 0u32);
        for x in d {
            a = (a + *x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(b << 16 | a, 0xe3c6_a7c2);
    }

    #[test]
    fn frames_round_trip_through_shared_zlib_streams() {
        let mut enc = Encoder::default();
        let mut dec = Decoder::default();
        let frames = vec![
            Frame::SynStream {
                id: 1,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynStream {
                id: 3,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "80".into()),
                    ("requestid".into(), "0".into()),
                ],
            },
            Frame::SynReply {
                id: 3,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                id: 3,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Ping(1),
            Frame::GoAway { last: 3, status: 0 },
            Frame::WindowUpdate { id: 3, delta: 100 },
            Frame::RstStream { id: 3, status: 5 },
            Frame::Settings(vec![(0, 7, 65536)]),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        // Fed a byte at a time, the decoder waits for whole frames.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }
}

#[cfg(test)]
mod captured {
    use super::*;

    /// `printf 'hi\n' | kubectl.1.27 exec -i p -- cat`, as kubectl 1.27
    /// sent it (scripts/spdy-capture.py): one stream each for error, stdin,
    /// stdout and stderr, then stdin's bytes and its FIN.
    #[test]
    fn kubectl_1_27_exec() {
        let mut buf = BytesMut::from(&include_bytes!("../testdata/kubectl-1.27-exec.spdy")[..]);
        let mut dec = Decoder::default();
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty());
        let kinds: Vec<(u32, String)> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::SynStream { id, headers, .. } => {
                    Some((*id, header(headers, "streamtype")?.to_string()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")]
                .map(|(i, k)| (i, k.to_string()))
        );
        assert!(frames.contains(&Frame::Data {
            id: 3,
            fin: false,
            data: Bytes::from_static(b"hi\n")
        }));
        assert!(frames.contains(&Frame::Data {
            id: 3,
            fin: true,
            data: Bytes::new()
        }));
    }
}
