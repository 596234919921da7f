//! A blocking client for the control socket: connect, send one request, read
//! its reply frames.

use std::cell::Cell;
use std::io::{BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};
use meshd_ipc::{PROTOCOL_VERSION, Reply, ReplyFrame, Request, RequestFrame, Response};

use crate::error::CtlError;

/// A connection to meshd.
pub struct Client {
    path: PathBuf,
    reader: BufReader<Stream>,
    next_id: u64,
    warned_version: Cell<bool>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, CtlError> {
        let name = path
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| CtlError::Protocol {
                path: path.to_path_buf(),
                reason: format!("invalid socket path: {e}"),
            })?;
        let stream = Stream::connect(name).map_err(|source| match source.kind() {
            ErrorKind::PermissionDenied => CtlError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => CtlError::Unreachable {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            next_id: 1,
            warned_version: Cell::new(false),
        })
    }

    /// Sends `request` and returns the payload of its single reply.
    pub fn call(&mut self, request: Request) -> Result<Response, CtlError> {
        let mut last = None;
        self.call_streaming(request, |response| {
            last = Some(response);
            Ok(())
        })?;
        last.ok_or_else(|| self.protocol("meshd sent no reply"))
    }

    /// Sends `request` and passes every reply frame's payload to `each`, until
    /// the last frame.
    pub fn call_streaming(
        &mut self,
        request: Request,
        mut each: impl FnMut(Response) -> Result<(), CtlError>,
    ) -> Result<(), CtlError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = RequestFrame {
            v: PROTOCOL_VERSION,
            id,
            request,
        };
        let bytes = meshd_ipc::encode(&frame).map_err(|e| self.protocol(e.to_string()))?;
        self.reader
            .get_mut()
            .write_all(&bytes)
            .map_err(|e| self.protocol(format!("sending request: {e}")))?;
        let mut line = Vec::new();
        loop {
            let more_input = meshd_ipc::read_frame(&mut self.reader, &mut line)
                .map_err(|e| self.protocol(format!("reading reply: {e}")))?;
            if !more_input {
                return Err(self.protocol("meshd closed the connection without answering"));
            }
            let reply: ReplyFrame =
                meshd_ipc::decode(&line).map_err(|e| self.protocol(e.to_string()))?;
            self.check_version(reply.v);
            if reply.id != id && reply.id != 0 {
                return Err(self.protocol(format!(
                    "reply for request {} while waiting for {id}",
                    reply.id
                )));
            }
            match reply.reply {
                Reply::Error(error) => return Err(CtlError::Daemon(error)),
                Reply::Ok(response) => each(response)?,
            }
            if !reply.more {
                return Ok(());
            }
        }
    }

    fn check_version(&self, version: u32) {
        if version != PROTOCOL_VERSION && !self.warned_version.replace(true) {
            eprintln!(
                "meshctl: warning: meshd speaks control protocol {version}, this meshctl {PROTOCOL_VERSION}; install matching versions"
            );
        }
    }

    /// The reply had another shape than the request calls for.
    pub fn unexpected(&self, response: &Response) -> CtlError {
        self.protocol(format!("unexpected reply {response:?}"))
    }

    fn protocol(&self, reason: impl Into<String>) -> CtlError {
        CtlError::Protocol {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }
}
