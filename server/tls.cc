#include "server/tls.h"

#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace loraserve::server {
namespace {

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the ", what, " ", path, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " ", path));
  return text.str();
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyDeleter>;

BioPtr MemoryBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Refuses to prompt for a passphrase (OpenSSL's default callback would read the terminal).
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

// The certificates in `pem`, in order (empty if none parses).
std::vector<X509Ptr> ParseCertificates(const std::string& pem) {
  std::vector<X509Ptr> certs;
  BioPtr bio = MemoryBio(pem);
  while (bio != nullptr) {
    X509* x = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr);
    if (x == nullptr) break;
    certs.emplace_back(x);
  }
  ERR_clear_error();  // the end of the input reads as an error
  return certs;
}

KeyPtr ParsePrivateKey(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  KeyPtr key(bio == nullptr ? nullptr
                            : PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  return key;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFiles(
    const TlsFiles& files) {
  if (files.cert_file.empty() && files.key_file.empty()) {
    if (!files.client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "a TLS client CA file needs a TLS certificate and key file (mutual TLS is TLS)");
    }
    return grpc::InsecureServerCredentials();
  }
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate file and a private key file (or neither for plaintext)");
  }
  absl::StatusOr<std::string> cert_pem = ReadPemFile(files.cert_file, "TLS certificate file");
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadPemFile(files.key_file, "TLS private key file");
  if (!key_pem.ok()) return key_pem.status();
  const std::vector<X509Ptr> chain = ParseCertificates(*cert_pem);
  if (chain.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("TLS certificate file ", files.cert_file,
                                                   " holds no PEM certificate"));
  }
  KeyPtr key = ParsePrivateKey(*key_pem);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS private key file ", files.key_file,
                     " holds no PEM private key (encrypted keys are not supported)"));
  }
  if (X509_check_private_key(chain.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("TLS private key file ", files.key_file,
                                                   " does not match the certificate in ",
                                                   files.cert_file));
  }

  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!files.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadPemFile(files.client_ca_file, "TLS client CA file");
    if (!ca_pem.ok()) return ca_pem.status();
    if (ParseCertificates(*ca_pem).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("TLS client CA file ", files.client_ca_file,
                                                     " holds no PEM certificate"));
    }
    ssl.pem_root_certs = *ca_pem;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace loraserve::server
