//! The HELO name and the envelope of the transaction in progress, kept in one reused buffer.

use super::address::MailParams;

/// HELO/EHLO name and the envelope of the current transaction, their text back to back in one
/// buffer that is reused between transactions: a session allocates only while its largest
/// envelope grows.
#[derive(Debug, Default)]
pub struct Envelope {
    /// The HELO name, the reverse-path, the MAIL parameters, then each recipient.
    text: Vec<u8>,
    helo_end: usize,
    from_end: usize,
    params_end: usize,
    rcpt_ends: Vec<usize>,
    esmtp: bool,
    pub(crate) mail: bool,
    pub(crate) params: MailParams,
    pub(crate) bdat: bool,
    /// Recipients refused for `max_recipients` in this transaction.
    pub(crate) overshoot: u32,
}

impl Envelope {
    /// The name the client gave in HELO or EHLO.
    pub fn helo(&self) -> &[u8] {
        &self.text[..self.helo_end]
    }
    /// Whether the client greeted with EHLO (RFC 5321 §4.1.1.1).
    pub fn esmtp(&self) -> bool {
        self.esmtp
    }
    /// The reverse-path without brackets; empty for the null sender `<>`.
    pub fn mail_from(&self) -> &[u8] {
        &self.text[self.helo_end..self.from_end]
    }
    /// The MAIL FROM parameters as the client sent them.
    pub fn mail_params(&self) -> &[u8] {
        &self.text[self.from_end..self.params_end]
    }
    /// The MAIL FROM parameters, parsed.
    pub fn params(&self) -> MailParams {
        self.params
    }
    /// The accepted recipients, without brackets.
    pub fn recipients(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = self.params_end;
        self.rcpt_ends.iter().map(move |&end| {
            let r = &self.text[start..end];
            start = end;
            r
        })
    }
    pub(crate) fn rcpt_count(&self) -> usize {
        self.rcpt_ends.len()
    }
    pub(crate) fn set_helo(&mut self, name: &[u8], esmtp: bool) {
        if self.text.capacity() == 0 {
            // Room for a typical envelope in one allocation.
            self.text.reserve(512);
        }
        self.text.clear();
        self.text.extend_from_slice(name);
        self.helo_end = self.text.len();
        self.esmtp = esmtp;
        self.reset();
    }
    pub(crate) fn set_mail(&mut self, address: &[u8], raw_params: &[u8], params: MailParams) {
        self.text.truncate(self.helo_end);
        self.text.extend_from_slice(address);
        self.from_end = self.text.len();
        self.text.extend_from_slice(raw_params);
        self.params_end = self.text.len();
        self.params = params;
        self.mail = true;
    }
    pub(crate) fn add_rcpt(&mut self, address: &[u8]) {
        self.text.extend_from_slice(address);
        self.rcpt_ends.push(self.text.len());
    }
    pub(crate) fn reset(&mut self) {
        self.text.truncate(self.helo_end);
        self.from_end = self.helo_end;
        self.params_end = self.helo_end;
        self.rcpt_ends.clear();
        self.params = MailParams::default();
        self.mail = false;
        self.bdat = false;
        self.overshoot = 0;
    }
}
