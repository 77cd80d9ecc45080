// The part of OpenSSL (libssl, libcrypto) the health checks use: TLS client connections for `https` probes and
// SHA-256 for `body-sha256`. Only Sources/QueueBalancer/Health/TLSConnection.swift and Digest.swift call it.
#ifndef NFQLB_COPENSSL_SHIM_H
#define NFQLB_COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>

/// SSL_set_tlsext_host_name is a macro Swift cannot call: the server name (SNI) sent in the ClientHello.
static inline int nfqlb_ssl_set_server_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/// SSL_OP_IGNORE_UNEXPECTED_EOF is a macro built from another: a peer closing without close_notify (as many
/// HTTP servers do after `Connection: close`) ends the answer instead of failing the read.
static inline void nfqlb_ssl_ctx_ignore_unexpected_eof(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
}

#endif
