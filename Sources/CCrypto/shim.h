#ifndef EMFLOW_CCRYPTO_SHIM_H
#define EMFLOW_CCRYPTO_SHIM_H
// Only the EVP digest and HMAC entry points emflow uses. EVP (not the deprecated SHA256_* API)
// picks the SHA-NI/AVX2 code paths that make `openssl dgst` fast, which is the speed to match.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#endif
