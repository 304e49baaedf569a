//! Python wrappers for `crate::wire`: frozen value classes for the ISAKMP
//! message and every payload, plus `parse`, `parse_many`, `parse_payloads` and
//! `encode_payloads`.
//!
//! Cost model: `parse` checks the whole datagram in Rust and keeps it (a
//! reference to the caller's `bytes`, no copy) with the offsets of each payload;
//! payload objects are only built when `Message.payloads` is read, and each of
//! them decodes its fields from its own bytes when a field is read. Every payload
//! class extends `Payload`, which holds the payload type and the exact bytes
//! (generic header + body) that IKE hashes are computed over.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyInt, PyList};
use pyo3::pyclass::boolean_struct::True;
use pyo3::{PyClass, PyClassInitializer};

use crate::error::WireError;
use crate::wire::header::{Header, HEADER_LEN};
use crate::wire::message::{encode_chain, finish_length, parse_chain, parse_message, RawPayload};
use crate::wire::payloads::{CertPayload, DeletePayload, IdPayload, NatOaPayload, NotifyPayload, Payload};
use crate::wire::sa::{Attribute, AttributeValue, Proposal, SaPayload, Transform};
use crate::wire::types::FLAG_ENCRYPTION;

type Owned = Box<[u8]>;

// --- small helpers ------------------------------------------------------------

fn value_error(msg: &str) -> PyErr {
    PyValueError::new_err(msg.to_owned())
}

/// Python-style repr of a byte string, shortened when long.
fn bytes_repr(b: &[u8]) -> String {
    if b.len() > 32 {
        let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
        return format!("<{} bytes {}...>", b.len(), hex);
    }
    let mut s = String::from("b'");
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('\'');
    s
}

fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

// --- data attributes, transforms, proposals ------------------------------------

/// SA data attribute (RFC 2408 section 3.3): an int value (0..65535) is the TV
/// form, a bytes value the TLV form.
#[pyclass(module = "ikecore._core", name = "Attribute", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyAttribute {
    inner: Attribute<Owned>,
}

#[pymethods]
impl PyAttribute {
    #[new]
    #[pyo3(signature = (r#type, value))]
    fn new(r#type: u16, value: &Bound<'_, PyAny>) -> PyResult<Self> {
        if r#type >= 0x8000 {
            return Err(value_error("Attribute: type must be below 32768 (the AF bit is set by the value form)"));
        }
        let value = if let Ok(b) = value.cast::<PyBytes>() {
            if b.as_bytes().len() > 0xffff {
                return Err(value_error("Attribute: value is longer than 65535 bytes"));
            }
            AttributeValue::Variable(b.as_bytes().into())
        } else if value.is_instance_of::<PyInt>() {
            let v: i64 = value.extract()?;
            let v = u16::try_from(v).map_err(|_| value_error("Attribute: int value must be 0..65535 (use bytes for TLV)"))?;
            AttributeValue::Basic(v)
        } else {
            return Err(PyTypeError::new_err("Attribute: value must be int (TV) or bytes (TLV)"));
        };
        Ok(PyAttribute { inner: Attribute { attr_type: r#type, value } })
    }

    /// Attribute type without the AF bit.
    #[getter(r#type)]
    fn attr_type(&self) -> u16 {
        self.inner.attr_type
    }

    /// int for the TV form, bytes for the TLV form.
    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match &self.inner.value {
            AttributeValue::Basic(v) => v.into_pyobject(py)?.into_any(),
            AttributeValue::Variable(b) => PyBytes::new(py, b).into_any(),
        })
    }

    /// The value as an int for either form (TLV read big-endian).
    #[getter]
    fn int_value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.inner.value {
            AttributeValue::Basic(v) => Ok(v.into_pyobject(py)?.into_any()),
            AttributeValue::Variable(b) => {
                if b.len() <= 8 {
                    let v = b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
                    Ok(v.into_pyobject(py)?.into_any())
                } else {
                    py.get_type::<PyInt>().call_method1("from_bytes", (PyBytes::new(py, b), "big"))
                }
            }
        }
    }

    fn __repr__(&self) -> String {
        match &self.inner.value {
            AttributeValue::Basic(v) => format!("Attribute(type={}, value={})", self.inner.attr_type, v),
            AttributeValue::Variable(b) => format!("Attribute(type={}, value={})", self.inner.attr_type, bytes_repr(b)),
        }
    }
}

/// Interned TV attributes: proposals repeat the same few (type, value) pairs, and
/// an Attribute is immutable, so parsed TV attributes share objects the way small
/// ints do (a direct-mapped table of 512 entries; TLV values are not interned).
type InternSlot = Option<(u16, u16, Py<PyAttribute>)>;
static TV_ATTRIBUTES: Mutex<Vec<InternSlot>> = Mutex::new(Vec::new());

fn attribute_object<'py>(py: Python<'py>, a: &Attribute<Owned>) -> PyResult<Bound<'py, PyAttribute>> {
    let AttributeValue::Basic(value) = a.value else {
        return Bound::new(py, PyAttribute { inner: a.clone() });
    };
    let slot = (usize::from(a.attr_type) * 31 + usize::from(value)) % 512;
    if let Ok(table) = TV_ATTRIBUTES.lock() {
        if let Some(Some((t, v, obj))) = table.get(slot) {
            if *t == a.attr_type && *v == value {
                return Ok(obj.bind(py).clone());
            }
        }
    }
    let obj = Bound::new(py, PyAttribute { inner: a.clone() })?;
    if let Ok(mut table) = TV_ATTRIBUTES.lock() {
        if table.is_empty() {
            table.resize_with(512, || None);
        }
        table[slot] = Some((a.attr_type, value, obj.clone().unbind()));
    }
    Ok(obj)
}

/// Transform substructure (RFC 2408 section 3.6).
#[pyclass(module = "ikecore._core", name = "Transform", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyTransform {
    inner: Transform<Owned>,
}

#[pymethods]
impl PyTransform {
    #[new]
    #[pyo3(signature = (number, transform_id, attributes))]
    fn new(number: u8, transform_id: u8, attributes: Vec<PyRef<'_, PyAttribute>>) -> Self {
        PyTransform {
            inner: Transform {
                number,
                transform_id,
                attributes: attributes.iter().map(|a| a.inner.clone()).collect(),
            },
        }
    }

    #[getter]
    fn number(&self) -> u8 {
        self.inner.number
    }

    #[getter]
    fn transform_id(&self) -> u8 {
        self.inner.transform_id
    }

    #[getter]
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for a in &self.inner.attributes {
            list.append(attribute_object(py, a)?)?;
        }
        Ok(list)
    }

    fn __repr__(&self) -> String {
        let attrs: Vec<String> =
            self.inner.attributes.iter().map(|a| PyAttribute { inner: a.clone() }.__repr__()).collect();
        format!(
            "Transform(number={}, transform_id={}, attributes=[{}])",
            self.inner.number,
            self.inner.transform_id,
            attrs.join(", ")
        )
    }
}

/// Proposal substructure (RFC 2408 section 3.5).
#[pyclass(module = "ikecore._core", name = "Proposal", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyProposal {
    inner: Proposal<Owned>,
}

#[pymethods]
impl PyProposal {
    #[new]
    #[pyo3(signature = (number, protocol_id, transforms, *, spi = b"".as_slice()))]
    #[pyo3(text_signature = "(number, protocol_id, transforms, *, spi=b'')")]
    fn new(number: u8, protocol_id: u8, transforms: Vec<PyRef<'_, PyTransform>>, spi: &[u8]) -> PyResult<Self> {
        if spi.len() > 255 {
            return Err(value_error("Proposal: spi is longer than 255 bytes"));
        }
        if transforms.len() > 255 {
            return Err(value_error("Proposal: more than 255 transforms"));
        }
        Ok(PyProposal {
            inner: Proposal {
                number,
                protocol_id,
                spi: spi.into(),
                transforms: transforms.iter().map(|t| t.inner.clone()).collect(),
            },
        })
    }

    #[getter]
    fn number(&self) -> u8 {
        self.inner.number
    }

    #[getter]
    fn protocol_id(&self) -> u8 {
        self.inner.protocol_id
    }

    #[getter]
    fn spi<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.spi)
    }

    #[getter]
    fn transforms(&self) -> Vec<PyTransform> {
        self.inner.transforms.iter().map(|t| PyTransform { inner: t.clone() }).collect()
    }

    fn __repr__(&self) -> String {
        let ts: Vec<String> = self.transforms().iter().map(PyTransform::__repr__).collect();
        format!(
            "Proposal(number={}, protocol_id={}, transforms=[{}], spi={})",
            self.inner.number,
            self.inner.protocol_id,
            ts.join(", "),
            bytes_repr(&self.inner.spi)
        )
    }
}

// --- payloads ------------------------------------------------------------------

/// Base class of every payload: the payload type and its exact bytes.
#[pyclass(module = "ikecore._core", name = "Payload", frozen, subclass)]
pub struct PyPayload {
    payload_type: u8,
    /// Generic header + body: verbatim when parsed, with Next Payload 0 when built.
    raw: Owned,
}

impl PyPayload {
    fn from_body(payload_type: u8, body: &[u8]) -> PyResult<PyPayload> {
        let len = u16::try_from(body.len() + 4).map_err(|_| value_error("payload body is longer than 65531 bytes"))?;
        let mut raw = Vec::with_capacity(body.len() + 4);
        raw.extend_from_slice(&[0, 0]);
        raw.extend_from_slice(&len.to_be_bytes());
        raw.extend_from_slice(body);
        Ok(PyPayload { payload_type, raw: raw.into_boxed_slice() })
    }

    fn body_bytes(&self) -> &[u8] {
        &self.raw[4..]
    }

    fn decoded(&self) -> PyResult<Payload<'_>> {
        Ok(Payload::decode(self.payload_type, self.body_bytes())?)
    }
}

fn base<'a, T: PyClass<BaseType = PyPayload, Frozen = True>>(
    slf: &'a Bound<'_, T>,
) -> &'a PyPayload {
    slf.as_super().get()
}

fn repr_fields(p: &Payload<'_>) -> String {
    match p {
        Payload::Sa(sa) => {
            let props: Vec<String> = sa
                .proposals
                .iter()
                .map(|pr| PyProposal { inner: pr.to_owned_proposal() }.__repr__())
                .collect();
            format!("[{}], doi={}, situation={}", props.join(", "), sa.doi, sa.situation)
        }
        Payload::Ke(d) | Payload::Hash(d) | Payload::Sig(d) | Payload::Nonce(d) | Payload::VendorId(d) | Payload::NatD(d) => {
            bytes_repr(d)
        }
        Payload::Id(id) => format!(
            "id_type={}, data={}, protocol_id={}, port={}",
            id.id_type,
            bytes_repr(id.data),
            id.protocol_id,
            id.port
        ),
        Payload::Cert(c) | Payload::Cr(c) => format!("encoding={}, data={}", c.encoding, bytes_repr(c.data)),
        Payload::Notify(n) => format!(
            "notify_type={}, doi={}, protocol_id={}, spi={}, data={}",
            n.notify_type,
            n.doi,
            n.protocol_id,
            bytes_repr(n.spi),
            bytes_repr(n.data)
        ),
        Payload::Delete(d) => {
            let spis: Vec<String> = d.spis.iter().map(|s| bytes_repr(s)).collect();
            format!("protocol_id={}, spis=[{}], doi={}", d.protocol_id, spis.join(", "), d.doi)
        }
        Payload::NatOa(n) => format!("id_type={}, data={}", n.id_type, bytes_repr(n.data)),
        Payload::Unknown(b) => format!("body={}", bytes_repr(b)),
    }
}

#[pymethods]
impl PyPayload {
    /// Payload type number (the Next Payload value that announced it).
    #[getter]
    fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// Payload body without the 4-byte generic header.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.body_bytes())
    }

    /// Generic header + body exactly as received (Next Payload 0 when built here).
    #[getter]
    fn raw<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.raw)
    }

    fn __eq__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other_payload) = other.cast::<PyPayload>() else {
            return Ok(py.NotImplemented());
        };
        let a = slf.get();
        let b = other_payload.get();
        let same = slf.get_type().is(other.get_type())
            && a.payload_type == b.payload_type
            && a.body_bytes() == b.body_bytes();
        Ok(same.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __hash__(&self) -> u64 {
        hash_of(&(self.payload_type, self.body_bytes()))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().name()?.to_string();
        let p = slf.get();
        let fields = match p.decoded() {
            Ok(d) => repr_fields(&d),
            Err(_) => format!("body={}", bytes_repr(p.body_bytes())),
        };
        Ok(match name.as_str() {
            "NatDPayload" | "NatOaPayload" | "UnknownPayload" => {
                format!("{name}(payload_type={}, {fields})", p.payload_type)
            }
            _ => format!("{name}({fields})"),
        })
    }
}

macro_rules! new_payload {
    ($sub:expr, $payload_type:expr, $body:expr) => {
        Ok(PyClassInitializer::from(PyPayload::from_body($payload_type, $body)?).add_subclass($sub))
    };
}

/// Payloads whose body is opaque data (KE, HASH, SIG, NONCE, VID).
macro_rules! data_payload {
    ($rust:ident, $pyname:literal, $ptype:expr, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(module = "ikecore._core", name = $pyname, frozen, extends = PyPayload)]
        pub struct $rust;

        #[pymethods]
        impl $rust {
            #[new]
            #[pyo3(signature = (data))]
            fn new(data: &[u8]) -> PyResult<PyClassInitializer<Self>> {
                new_payload!($rust, $ptype, data)
            }

            /// The payload data (the whole body).
            #[getter]
            fn data<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyBytes> {
                PyBytes::new(slf.py(), base(slf).body_bytes())
            }
        }
    };
}

data_payload!(PyKePayload, "KePayload", 4, "Key Exchange payload (RFC 2408 section 3.7).");
data_payload!(PyHashPayload, "HashPayload", 8, "Hash payload (RFC 2408 section 3.11).");
data_payload!(PySigPayload, "SigPayload", 9, "Signature payload (RFC 2408 section 3.12).");
data_payload!(PyNoncePayload, "NoncePayload", 10, "Nonce payload (RFC 2408 section 3.13).");
data_payload!(PyVendorIdPayload, "VendorIdPayload", 13, "Vendor ID payload (RFC 2408 section 3.16).");

/// Security Association payload (RFC 2408 section 3.4, RFC 2407 section 4.6.1).
#[pyclass(module = "ikecore._core", name = "SaPayload", frozen, extends = PyPayload)]
pub struct PySaPayload;

impl PySaPayload {
    fn sa<'a>(slf: &'a Bound<'_, Self>) -> PyResult<SaPayload<&'a [u8]>> {
        Ok(SaPayload::parse(base(slf).body_bytes())?)
    }
}

#[pymethods]
impl PySaPayload {
    #[new]
    #[pyo3(signature = (proposals, *, doi = 1, situation = 1))]
    fn new(proposals: Vec<PyRef<'_, PyProposal>>, doi: u32, situation: u32) -> PyResult<PyClassInitializer<Self>> {
        let sa = SaPayload { doi, situation, proposals: proposals.iter().map(|p| p.inner.clone()).collect() };
        let mut body = Vec::with_capacity(64);
        sa.encode_body(&mut body)?;
        new_payload!(PySaPayload, 1, &body)
    }

    #[getter]
    fn doi(slf: &Bound<'_, Self>) -> PyResult<u32> {
        Ok(Self::sa(slf)?.doi)
    }

    #[getter]
    fn situation(slf: &Bound<'_, Self>) -> PyResult<u32> {
        Ok(Self::sa(slf)?.situation)
    }

    #[getter]
    fn proposals(slf: &Bound<'_, Self>) -> PyResult<Vec<PyProposal>> {
        Ok(Self::sa(slf)?.proposals.iter().map(|p| PyProposal { inner: p.to_owned_proposal() }).collect())
    }
}

/// Identification payload (RFC 2408 section 3.8, RFC 2407 section 4.6.2).
#[pyclass(module = "ikecore._core", name = "IdPayload", frozen, extends = PyPayload)]
pub struct PyIdPayload;

impl PyIdPayload {
    fn id<'a>(slf: &'a Bound<'_, Self>) -> PyResult<IdPayload<&'a [u8]>> {
        match base(slf).decoded()? {
            Payload::Id(id) => Ok(id),
            _ => Err(value_error("not an ID payload")),
        }
    }
}

#[pymethods]
impl PyIdPayload {
    #[new]
    #[pyo3(signature = (id_type, data, *, protocol_id = 0, port = 0))]
    fn new(id_type: u8, data: &[u8], protocol_id: u8, port: u16) -> PyResult<PyClassInitializer<Self>> {
        let mut body = Vec::with_capacity(4 + data.len());
        IdPayload { id_type, protocol_id, port, data }.encode_body(&mut body);
        new_payload!(PyIdPayload, 5, &body)
    }

    #[getter]
    fn id_type(slf: &Bound<'_, Self>) -> PyResult<u8> {
        Ok(Self::id(slf)?.id_type)
    }

    #[getter]
    fn protocol_id(slf: &Bound<'_, Self>) -> PyResult<u8> {
        Ok(Self::id(slf)?.protocol_id)
    }

    #[getter]
    fn port(slf: &Bound<'_, Self>) -> PyResult<u16> {
        Ok(Self::id(slf)?.port)
    }

    #[getter]
    fn data<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(slf.py(), Self::id(slf)?.data))
    }
}

macro_rules! cert_payload {
    ($rust:ident, $pyname:literal, $ptype:expr, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(module = "ikecore._core", name = $pyname, frozen, extends = PyPayload)]
        pub struct $rust;

        impl $rust {
            fn cert<'a>(slf: &'a Bound<'_, Self>) -> PyResult<CertPayload<&'a [u8]>> {
                match base(slf).decoded()? {
                    Payload::Cert(c) | Payload::Cr(c) => Ok(c),
                    _ => Err(value_error("not a CERT/CR payload")),
                }
            }
        }

        #[pymethods]
        impl $rust {
            #[new]
            #[pyo3(signature = (encoding, data))]
            fn new(encoding: u8, data: &[u8]) -> PyResult<PyClassInitializer<Self>> {
                let mut body = Vec::with_capacity(1 + data.len());
                CertPayload { encoding, data }.encode_body(&mut body);
                new_payload!($rust, $ptype, &body)
            }

            /// Certificate encoding / certificate type.
            #[getter]
            fn encoding(slf: &Bound<'_, Self>) -> PyResult<u8> {
                Ok(Self::cert(slf)?.encoding)
            }

            /// Certificate data (CERT) or certificate authority (CR).
            #[getter]
            fn data<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyBytes>> {
                Ok(PyBytes::new(slf.py(), Self::cert(slf)?.data))
            }
        }
    };
}

cert_payload!(PyCertPayload, "CertPayload", 6, "Certificate payload (RFC 2408 section 3.9).");
cert_payload!(PyCrPayload, "CrPayload", 7, "Certificate Request payload (RFC 2408 section 3.10).");

/// Notification payload (RFC 2408 section 3.14).
#[pyclass(module = "ikecore._core", name = "NotifyPayload", frozen, extends = PyPayload)]
pub struct PyNotifyPayload;

impl PyNotifyPayload {
    fn notify<'a>(slf: &'a Bound<'_, Self>) -> PyResult<NotifyPayload<&'a [u8]>> {
        match base(slf).decoded()? {
            Payload::Notify(n) => Ok(n),
            _ => Err(value_error("not a notification payload")),
        }
    }
}

#[pymethods]
impl PyNotifyPayload {
    #[new]
    #[pyo3(signature = (notify_type, *, doi = 1, protocol_id = 1, spi = b"".as_slice(), data = b"".as_slice()))]
    #[pyo3(text_signature = "(notify_type, *, doi=1, protocol_id=1, spi=b'', data=b'')")]
    fn new(notify_type: u16, doi: u32, protocol_id: u8, spi: &[u8], data: &[u8]) -> PyResult<PyClassInitializer<Self>> {
        let mut body = Vec::with_capacity(8 + spi.len() + data.len());
        NotifyPayload { doi, protocol_id, notify_type, spi, data }.encode_body(&mut body)?;
        new_payload!(PyNotifyPayload, 11, &body)
    }

    #[getter]
    fn notify_type(slf: &Bound<'_, Self>) -> PyResult<u16> {
        Ok(Self::notify(slf)?.notify_type)
    }

    #[getter]
    fn doi(slf: &Bound<'_, Self>) -> PyResult<u32> {
        Ok(Self::notify(slf)?.doi)
    }

    #[getter]
    fn protocol_id(slf: &Bound<'_, Self>) -> PyResult<u8> {
        Ok(Self::notify(slf)?.protocol_id)
    }

    #[getter]
    fn spi_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        Ok(Self::notify(slf)?.spi.len())
    }

    #[getter]
    fn spi<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(slf.py(), Self::notify(slf)?.spi))
    }

    #[getter]
    fn data<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(slf.py(), Self::notify(slf)?.data))
    }
}

/// Delete payload (RFC 2408 section 3.15).
#[pyclass(module = "ikecore._core", name = "DeletePayload", frozen, extends = PyPayload)]
pub struct PyDeletePayload;

impl PyDeletePayload {
    fn delete<'a>(slf: &'a Bound<'_, Self>) -> PyResult<DeletePayload<&'a [u8]>> {
        match base(slf).decoded()? {
            Payload::Delete(d) => Ok(d),
            _ => Err(value_error("not a delete payload")),
        }
    }
}

#[pymethods]
impl PyDeletePayload {
    #[new]
    #[pyo3(signature = (protocol_id, spis, *, doi = 1))]
    fn new(protocol_id: u8, spis: Vec<Vec<u8>>, doi: u32) -> PyResult<PyClassInitializer<Self>> {
        let spi_size = spis.first().map_or(0, Vec::len);
        let spi_size = u8::try_from(spi_size).map_err(|_| value_error("DeletePayload: spis longer than 255 bytes"))?;
        let mut body = Vec::with_capacity(8 + spis.len() * spi_size as usize);
        DeletePayload { doi, protocol_id, spi_size, spis }.encode_body(&mut body)?;
        new_payload!(PyDeletePayload, 12, &body)
    }

    #[getter]
    fn doi(slf: &Bound<'_, Self>) -> PyResult<u32> {
        Ok(Self::delete(slf)?.doi)
    }

    #[getter]
    fn protocol_id(slf: &Bound<'_, Self>) -> PyResult<u8> {
        Ok(Self::delete(slf)?.protocol_id)
    }

    #[getter]
    fn spi_size(slf: &Bound<'_, Self>) -> PyResult<u8> {
        Ok(Self::delete(slf)?.spi_size)
    }

    #[getter]
    fn spis<'py>(slf: &Bound<'py, Self>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        Ok(Self::delete(slf)?.spis.iter().map(|s| PyBytes::new(slf.py(), s)).collect())
    }
}

/// NAT-D payload (RFC 3947 section 3.2; draft number 130).
#[pyclass(module = "ikecore._core", name = "NatDPayload", frozen, extends = PyPayload)]
pub struct PyNatDPayload;

#[pymethods]
impl PyNatDPayload {
    #[new]
    #[pyo3(signature = (data, *, payload_type = 20))]
    fn new(data: &[u8], payload_type: u8) -> PyResult<PyClassInitializer<Self>> {
        if payload_type != 20 && payload_type != 130 {
            return Err(value_error("NatDPayload: payload_type must be 20 or 130"));
        }
        new_payload!(PyNatDPayload, payload_type, data)
    }

    /// HASH(CKY-I | CKY-R | IP | Port).
    #[getter]
    fn data<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyBytes> {
        PyBytes::new(slf.py(), base(slf).body_bytes())
    }
}

/// NAT-OA payload (RFC 3947 section 5.2; draft number 131).
#[pyclass(module = "ikecore._core", name = "NatOaPayload", frozen, extends = PyPayload)]
pub struct PyNatOaPayload;

impl PyNatOaPayload {
    fn oa<'a>(slf: &'a Bound<'_, Self>) -> PyResult<NatOaPayload<&'a [u8]>> {
        match base(slf).decoded()? {
            Payload::NatOa(n) => Ok(n),
            _ => Err(value_error("not a NAT-OA payload")),
        }
    }
}

#[pymethods]
impl PyNatOaPayload {
    #[new]
    #[pyo3(signature = (id_type, data, *, payload_type = 21))]
    fn new(id_type: u8, data: &[u8], payload_type: u8) -> PyResult<PyClassInitializer<Self>> {
        if payload_type != 21 && payload_type != 131 {
            return Err(value_error("NatOaPayload: payload_type must be 21 or 131"));
        }
        let mut body = Vec::with_capacity(4 + data.len());
        NatOaPayload { id_type, data }.encode_body(&mut body);
        new_payload!(PyNatOaPayload, payload_type, &body)
    }

    #[getter]
    fn id_type(slf: &Bound<'_, Self>) -> PyResult<u8> {
        Ok(Self::oa(slf)?.id_type)
    }

    #[getter]
    fn data<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(slf.py(), Self::oa(slf)?.data))
    }
}

/// Any payload type ikecore does not decode, carried as its raw body.
#[pyclass(module = "ikecore._core", name = "UnknownPayload", frozen, extends = PyPayload)]
pub struct PyUnknownPayload;

#[pymethods]
impl PyUnknownPayload {
    #[new]
    #[pyo3(signature = (payload_type, body))]
    fn new(payload_type: u8, body: &[u8]) -> PyResult<PyClassInitializer<Self>> {
        if payload_type == 0 {
            return Err(value_error("UnknownPayload: payload_type must not be 0"));
        }
        new_payload!(PyUnknownPayload, payload_type, body)
    }
}

/// Build the payload object for `raw` (generic header + body, already checked).
fn payload_object<'py>(py: Python<'py>, payload_type: u8, raw: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let b = PyClassInitializer::from(PyPayload { payload_type, raw: raw.into() });
    Ok(match payload_type {
        1 => Bound::new(py, b.add_subclass(PySaPayload))?.into_any(),
        4 => Bound::new(py, b.add_subclass(PyKePayload))?.into_any(),
        5 => Bound::new(py, b.add_subclass(PyIdPayload))?.into_any(),
        6 => Bound::new(py, b.add_subclass(PyCertPayload))?.into_any(),
        7 => Bound::new(py, b.add_subclass(PyCrPayload))?.into_any(),
        8 => Bound::new(py, b.add_subclass(PyHashPayload))?.into_any(),
        9 => Bound::new(py, b.add_subclass(PySigPayload))?.into_any(),
        10 => Bound::new(py, b.add_subclass(PyNoncePayload))?.into_any(),
        11 => Bound::new(py, b.add_subclass(PyNotifyPayload))?.into_any(),
        12 => Bound::new(py, b.add_subclass(PyDeletePayload))?.into_any(),
        13 => Bound::new(py, b.add_subclass(PyVendorIdPayload))?.into_any(),
        20 | 130 => Bound::new(py, b.add_subclass(PyNatDPayload))?.into_any(),
        21 | 131 => Bound::new(py, b.add_subclass(PyNatOaPayload))?.into_any(),
        _ => Bound::new(py, b.add_subclass(PyUnknownPayload))?.into_any(),
    })
}

fn payload_list<'py>(py: Python<'py>, data: &[u8], spans: &[Span]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for s in spans {
        let start = s.offset as usize;
        let raw = &data[start..start + s.len as usize];
        list.append(payload_object(py, s.payload_type, raw)?)?;
    }
    Ok(list)
}

/// Borrow the (type, reserved, body) of every payload object in `payloads`.
fn payload_parts<'a, 'py>(payloads: &'a [Bound<'py, PyPayload>]) -> Vec<(u8, u8, &'a [u8])> {
    payloads.iter().map(|p| {
        let p = p.get();
        (p.payload_type, p.raw[1], p.body_bytes())
    }).collect()
}

fn extract_payloads<'py>(payloads: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyPayload>>> {
    let mut out = Vec::new();
    for item in payloads.try_iter()? {
        let item = item?;
        let p = item
            .cast_into::<PyPayload>()
            .map_err(|_| PyTypeError::new_err("payloads must be ikecore payload objects"))?;
        out.push(p);
    }
    Ok(out)
}

// --- messages ------------------------------------------------------------------

/// Where one payload sits in the message buffer.
#[derive(Clone, Copy)]
struct Span {
    payload_type: u8,
    offset: u32,
    len: u16,
}

fn spans_of(payloads: &[RawPayload<'_>], base_offset: usize) -> Vec<Span> {
    payloads
        .iter()
        .map(|p| Span { payload_type: p.payload_type, offset: (p.offset + base_offset) as u32, len: p.raw.len() as u16 })
        .collect()
}

enum Storage {
    /// The caller's bytes object, kept without copying.
    Shared(PyBackedBytes),
    /// Bytes encoded here.
    Owned(Owned),
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Shared(b) => b,
            Storage::Owned(b) => b,
        }
    }
}

/// An ISAKMP message (RFC 2408 section 3.1): header plus payload chain, or
/// header plus ciphertext when the E flag is set.
#[pyclass(module = "ikecore._core", name = "Message", frozen)]
pub struct PyMessage {
    header: Header,
    data: Storage,
    spans: Vec<Span>,
}

/// Check a datagram and remember where its payloads are (no Python objects).
fn parse_checked(data: &[u8]) -> Result<(Header, Vec<Span>), WireError> {
    let msg = parse_message(data)?;
    Ok((msg.header, spans_of(&msg.payloads, 0)))
}

fn cookie(value: &[u8], name: &str) -> PyResult<[u8; 8]> {
    <[u8; 8]>::try_from(value).map_err(|_| PyValueError::new_err(format!("Message: {name} must be 8 bytes")))
}

#[pymethods]
impl PyMessage {
    #[new]
    #[pyo3(signature = (initiator_cookie, responder_cookie, exchange_type, payloads = None, *, message_id = 0, flags = 0, version = 0x10, next_payload = None, body = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        initiator_cookie: &[u8],
        responder_cookie: &[u8],
        exchange_type: u8,
        payloads: Option<&Bound<'_, PyAny>>,
        message_id: u32,
        flags: u8,
        version: u8,
        next_payload: Option<u8>,
        body: Option<&[u8]>,
    ) -> PyResult<Self> {
        let payloads = match payloads {
            Some(p) => extract_payloads(p)?,
            None => Vec::new(),
        };
        let mut header = Header {
            initiator_cookie: cookie(initiator_cookie, "initiator_cookie")?,
            responder_cookie: cookie(responder_cookie, "responder_cookie")?,
            next_payload: 0,
            version,
            exchange_type,
            flags,
            message_id,
            length: 0,
        };
        let mut out = Vec::with_capacity(256);
        if let Some(body) = body {
            if !payloads.is_empty() {
                return Err(value_error("Message: give either payloads or body, not both"));
            }
            header.next_payload = next_payload.ok_or_else(|| value_error("Message: body needs next_payload"))?;
            header.encode(&mut out);
            out.extend_from_slice(body);
        } else {
            let parts = payload_parts(&payloads);
            let first = parts.first().map_or(0, |p| p.0);
            match next_payload {
                Some(n) if n != first => {
                    return Err(value_error("Message: next_payload differs from the first payload's type"));
                }
                _ => {}
            }
            header.next_payload = first;
            header.encode(&mut out);
            encode_chain(&mut out, parts)?;
        }
        finish_length(&mut out)?;
        header.length = out.len() as u32;
        let spans = if header.flags & FLAG_ENCRYPTION != 0 {
            Vec::new()
        } else {
            spans_of(&parse_chain(header.next_payload, &out[HEADER_LEN..], true)?, HEADER_LEN)
        };
        Ok(PyMessage { header, data: Storage::Owned(out.into_boxed_slice()), spans })
    }

    #[getter]
    fn initiator_cookie<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.header.initiator_cookie)
    }

    #[getter]
    fn responder_cookie<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.header.responder_cookie)
    }

    #[getter]
    fn next_payload(&self) -> u8 {
        self.header.next_payload
    }

    #[getter]
    fn version(&self) -> u8 {
        self.header.version
    }

    #[getter]
    fn exchange_type(&self) -> u8 {
        self.header.exchange_type
    }

    #[getter]
    fn flags(&self) -> u8 {
        self.header.flags
    }

    #[getter]
    fn message_id(&self) -> u32 {
        self.header.message_id
    }

    #[getter]
    fn length(&self) -> u32 {
        self.header.length
    }

    /// True when the E flag is set: `body` is ciphertext and `payloads` is empty.
    #[getter]
    fn encrypted(&self) -> bool {
        self.header.encrypted()
    }

    /// The payload objects, in chain order (a new list on every access).
    #[getter]
    fn payloads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        payload_list(py, &self.data, &self.spans)
    }

    /// The bytes after the header (ciphertext when encrypted).
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data[HEADER_LEN..])
    }

    /// The whole datagram (the received bytes verbatim for a parsed message).
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        match &self.data {
            Storage::Shared(b) => match b.into_pyobject(py) {
                Ok(obj) => obj,
                Err(never) => match never {},
            },
            Storage::Owned(b) => PyBytes::new(py, b),
        }
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<PyMessage>() else {
            return Ok(py.NotImplemented());
        };
        let same = *self.data == *other.get().data;
        Ok(same.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __hash__(&self) -> u64 {
        hash_of(&*self.data)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let h = &self.header;
        let hex = |c: &[u8; 8]| c.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let content = if h.encrypted() {
            format!("next_payload={}, body=<{} encrypted bytes>", h.next_payload, self.data.len() - HEADER_LEN)
        } else {
            let list = payload_list(py, &self.data, &self.spans)?;
            let mut parts = Vec::new();
            for p in list.iter() {
                parts.push(p.repr()?.to_string());
            }
            format!("payloads=[{}]", parts.join(", "))
        };
        Ok(format!(
            "Message(initiator_cookie={}, responder_cookie={}, exchange_type={}, flags={}, message_id={}, length={}, {})",
            hex(&h.initiator_cookie),
            hex(&h.responder_cookie),
            h.exchange_type,
            h.flags,
            h.message_id,
            h.length,
            content
        ))
    }
}

/// Parse one datagram (no non-ESP marker) into a Message.
///
/// Raises PayloadMalformed, UnequalPayloadLengths or InvalidMajorVersion.
#[pyfunction]
fn parse(data: PyBackedBytes) -> PyResult<PyMessage> {
    let (header, spans) = parse_checked(&data)?;
    Ok(PyMessage { header, data: Storage::Shared(data), spans })
}

/// Parse many datagrams with the GIL released; a bad datagram yields the
/// exception instance in its place.
#[pyfunction]
fn parse_many<'py>(py: Python<'py>, datagrams: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let mut inputs: Vec<PyBackedBytes> = Vec::new();
    for item in datagrams.try_iter()? {
        inputs.push(item?.extract::<PyBackedBytes>().map_err(|_| PyTypeError::new_err("parse_many: every datagram must be bytes"))?);
    }
    let results: Vec<Result<(Header, Vec<Span>), WireError>> =
        py.detach(|| inputs.iter().map(|d| parse_checked(d)).collect());
    let list = PyList::empty(py);
    for (data, result) in inputs.into_iter().zip(results) {
        match result {
            Ok((header, spans)) => list.append(Bound::new(py, PyMessage { header, data: Storage::Shared(data), spans })?)?,
            Err(e) => list.append(PyErr::from(e).into_value(py))?,
        }
    }
    Ok(list)
}

/// Parse a decrypted payload chain starting with type `first_payload`; bytes
/// after the payload with Next Payload 0 (padding) are ignored.
#[pyfunction]
fn parse_payloads<'py>(py: Python<'py>, first_payload: u8, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let chain = parse_chain(first_payload, data, false)?;
    payload_list(py, data, &spans_of(&chain, 0))
}

/// Encode payload objects as a chain (Next Payload fields set, last = 0).
#[pyfunction]
fn encode_payloads<'py>(py: Python<'py>, payloads: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let payloads = extract_payloads(payloads)?;
    let mut out = Vec::with_capacity(256);
    encode_chain(&mut out, payload_parts(&payloads))?;
    Ok(PyBytes::new(py, &out))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAttribute>()?;
    m.add_class::<PyTransform>()?;
    m.add_class::<PyProposal>()?;
    m.add_class::<PyPayload>()?;
    m.add_class::<PySaPayload>()?;
    m.add_class::<PyKePayload>()?;
    m.add_class::<PyIdPayload>()?;
    m.add_class::<PyCertPayload>()?;
    m.add_class::<PyCrPayload>()?;
    m.add_class::<PyHashPayload>()?;
    m.add_class::<PySigPayload>()?;
    m.add_class::<PyNoncePayload>()?;
    m.add_class::<PyNotifyPayload>()?;
    m.add_class::<PyDeletePayload>()?;
    m.add_class::<PyVendorIdPayload>()?;
    m.add_class::<PyNatDPayload>()?;
    m.add_class::<PyNatOaPayload>()?;
    m.add_class::<PyUnknownPayload>()?;
    m.add_class::<PyMessage>()?;
    m.add_function(wrap_pyfunction!(parse, m)?)?;
    m.add_function(wrap_pyfunction!(parse_many, m)?)?;
    m.add_function(wrap_pyfunction!(parse_payloads, m)?)?;
    m.add_function(wrap_pyfunction!(encode_payloads, m)?)?;
    Ok(())
}
