//! ISAKMP wire codec (RFC 2408, RFC 2407 DOI, RFC 3947 NAT-T payloads).
