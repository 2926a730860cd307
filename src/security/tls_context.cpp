// TlsServerContext: every file of [listener.tls] read, checked and turned into
// one SSL_CTX. Errors name the file and the reason.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <utility>

#include "security/tls.hpp"
#include "security/tls_internal.hpp"

namespace moat::security {

using tls_detail::ConnectionHooks;
using tls_detail::lower;
using tls_detail::SniEntry;
using tls_detail::TicketKey;
using tls_detail::TicketKeyRing;

// ---------------------------------------------------------------- enums

std::optional<ClientCertMode> parse_client_cert_mode(std::string_view s) {
  if (s == "none") return ClientCertMode::None;
  if (s == "optional") return ClientCertMode::Optional;
  if (s == "required") return ClientCertMode::Required;
  return std::nullopt;
}
std::optional<CrlCheck> parse_crl_check(std::string_view s) {
  if (s == "leaf") return CrlCheck::Leaf;
  if (s == "chain") return CrlCheck::Chain;
  return std::nullopt;
}
std::optional<IdentityFrom> parse_identity_from(std::string_view s) {
  if (s == "cn") return IdentityFrom::Cn;
  if (s == "san-dns") return IdentityFrom::SanDns;
  if (s == "san-email") return IdentityFrom::SanEmail;
  if (s == "san-uri") return IdentityFrom::SanUri;
  if (s == "subject") return IdentityFrom::Subject;
  if (s == "psk") return IdentityFrom::Psk;
  return std::nullopt;
}
std::string_view to_string(ClientCertMode m) {
  switch (m) {
    case ClientCertMode::None:
      return "none";
    case ClientCertMode::Optional:
      return "optional";
    case ClientCertMode::Required:
      return "required";
  }
  return "?";
}
std::string_view to_string(CrlCheck c) {
  return c == CrlCheck::Leaf ? "leaf" : "chain";
}
std::string_view to_string(IdentityFrom i) {
  switch (i) {
    case IdentityFrom::Cn:
      return "cn";
    case IdentityFrom::SanDns:
      return "san-dns";
    case IdentityFrom::SanEmail:
      return "san-email";
    case IdentityFrom::SanUri:
      return "san-uri";
    case IdentityFrom::Subject:
      return "subject";
    case IdentityFrom::Psk:
      return "psk";
  }
  return "?";
}

namespace tls_detail {

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

// ---------------------------------------------------------------- ticket keys

TicketKeyRing::TicketKeyRing(std::chrono::seconds interval) : interval_(interval) {
  rotate();
}

TicketKeyRing::~TicketKeyRing() {
  if (!keys_.empty()) OPENSSL_cleanse(keys_.data(), keys_.size() * sizeof(TicketKey));
}

void TicketKeyRing::rotate() {
  TicketKey k;
  if (RAND_bytes(k.name, sizeof k.name) != 1 || RAND_priv_bytes(k.aes, sizeof k.aes) != 1 ||
      RAND_priv_bytes(k.hmac, sizeof k.hmac) != 1)
    throw TlsError("tls: no randomness for session-ticket keys");
  std::lock_guard lock(mu_);
  keys_.insert(keys_.begin(), k);
  if (keys_.size() > 2) {
    OPENSSL_cleanse(&keys_.back(), sizeof(TicketKey));
    keys_.pop_back();
  }
  OPENSSL_cleanse(&k, sizeof k);
}

void TicketKeyRing::maybe_rotate(std::chrono::steady_clock::time_point now) {
  bool due = false;
  {
    std::lock_guard lock(mu_);
    if (next_ == std::chrono::steady_clock::time_point{}) {
      next_ = now + interval_;  // the first time seen starts the period
    } else if (now >= next_) {
      next_ = now + interval_;
      due = true;
    }
  }
  if (due) rotate();
}

void TicketKeyRing::current(TicketKey& out) {
  std::lock_guard lock(mu_);
  out = keys_.front();
}

int TicketKeyRing::find(const unsigned char name[16], TicketKey& out) {
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < keys_.size(); ++i) {
    if (CRYPTO_memcmp(keys_[i].name, name, 16) == 0) {
      out = keys_[i];
      return i == 0 ? 1 : 2;
    }
  }
  return 0;
}

}  // namespace tls_detail

TlsServerContext::Impl::~Impl() {
  if (ctx) SSL_CTX_free(ctx);
  for (X509_CRL* c : crls) X509_CRL_free(c);
  for (auto& [id, key] : psk) OPENSSL_cleanse(key.data(), key.size());
  for (auto& e : sni) {
    X509_free(e.cert);
    EVP_PKEY_free(e.key);
    if (e.chain) sk_X509_pop_free(e.chain, X509_free);
  }
  X509_free(ocsp_leaf);
}

namespace {

// ---------------------------------------------------------------- helpers

std::string quoted(const std::filesystem::path& p) {
  return "'" + p.string() + "'";
}

// The reason of the most recent OpenSSL error, and an empty error queue.
std::string openssl_reason() {
  unsigned long e = ERR_peek_last_error();
  std::string r;
  if (e != 0) {
    const char* s = ERR_reason_error_string(e);
    r = s ? s : "error " + std::to_string(ERR_GET_REASON(e));
  } else {
    r = "unknown OpenSSL error";
  }
  ERR_clear_error();
  return r;
}

[[noreturn]] void fail(std::string_view what, const std::filesystem::path& file, std::string_view reason) {
  ERR_clear_error();
  throw TlsError("tls: " + std::string(what) + " " + quoted(file) + ": " + std::string(reason));
}

std::string read_file(std::string_view what, const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(what, file, std::string("cannot read: ") + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(what, file, std::string("cannot read: ") + std::strerror(errno));
  return ss.str();
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;

BioPtr mem_bio(const std::string& data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string asn1_time_text(const ASN1_TIME* t) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (!t || ASN1_TIME_print(b.get(), t) != 1) return "?";
  char* data = nullptr;
  const long n = BIO_get_mem_data(b.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string name_text(const X509_NAME* name) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (X509_NAME_print_ex(b.get(), name, 0, XN_FLAG_RFC2253) < 0) return "?";
  char* data = nullptr;
  const long n = BIO_get_mem_data(b.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

struct Chain {
  X509* leaf = nullptr;
  STACK_OF(X509) * extra = nullptr;
  ~Chain() {
    X509_free(leaf);
    if (extra) sk_X509_pop_free(extra, X509_free);
  }
};

void load_chain(const std::filesystem::path& file, Chain& out) {
  const std::string data = read_file("certificate", file);
  ERR_clear_error();
  BioPtr b = mem_bio(data);
  out.leaf = PEM_read_bio_X509_AUX(b.get(), nullptr, nullptr, nullptr);
  if (!out.leaf) fail("certificate", file, "no PEM certificate found (" + openssl_reason() + ")");
  out.extra = sk_X509_new_null();
  while (X509* x = PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr)) sk_X509_push(out.extra, x);
  const unsigned long e = ERR_peek_last_error();
  if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))
    fail("certificate", file, "malformed certificate in the chain (" + openssl_reason() + ")");
  ERR_clear_error();
}

struct PasswordArg {
  const std::string* password;
  bool asked = false;
};

int password_cb(char* buf, int size, int /*rwflag*/, void* u) {
  auto* arg = static_cast<PasswordArg*>(u);
  arg->asked = true;
  if (arg->password->empty() || arg->password->size() > static_cast<std::size_t>(size)) return -1;
  std::memcpy(buf, arg->password->data(), arg->password->size());
  return static_cast<int>(arg->password->size());
}

EVP_PKEY* load_key(const std::filesystem::path& file, const std::string& password) {
  std::string data = read_file("key", file);
  ERR_clear_error();
  PasswordArg arg{&password};
  BioPtr b = mem_bio(data);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(b.get(), nullptr, password_cb, &arg);
  OPENSSL_cleanse(data.data(), data.size());
  if (!key) {
    if (arg.asked && password.empty()) fail("key", file, "the key is encrypted and key_password is not set");
    if (arg.asked) fail("key", file, "wrong password (key_password)");
    fail("key", file, "no PEM private key found (" + openssl_reason() + ")");
  }
  return key;
}

void check_key_file_mode(const std::filesystem::path& file, std::vector<std::string>& warnings) {
  struct stat st {};
  if (::stat(file.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
    warnings.push_back("tls: key " + quoted(file) + " is readable by group or others (chmod 600)");
}

// Server certificates: an expired one is refused (every client would reject it,
// and on reload the previous one keeps serving); not yet valid or expiring within
// 30 days is a warning.
void check_validity(const std::filesystem::path& file, const X509* cert, std::time_t now,
                    std::vector<std::string>& warnings) {
  std::time_t t = now;
  if (X509_cmp_time(X509_get0_notAfter(cert), &t) < 0)
    fail("certificate", file, "expired on " + asn1_time_text(X509_get0_notAfter(cert)));
  if (X509_cmp_time(X509_get0_notBefore(cert), &t) > 0)
    warnings.push_back("tls: certificate " + quoted(file) + " is not valid before " +
                       asn1_time_text(X509_get0_notBefore(cert)));
  std::time_t soon = now + 30 * 24 * 3600;
  if (X509_cmp_time(X509_get0_notAfter(cert), &soon) < 0)
    warnings.push_back("tls: certificate " + quoted(file) + " expires on " +
                       asn1_time_text(X509_get0_notAfter(cert)));
}

struct CertAndKey {
  Chain chain;
  EVP_PKEY* key = nullptr;
  ~CertAndKey() { EVP_PKEY_free(key); }
};

void load_cert_and_key(const std::filesystem::path& cert, const std::filesystem::path& key,
                       const std::string& password, std::time_t now, std::vector<std::string>& warnings,
                       CertAndKey& out) {
  if (key.empty()) fail("certificate", cert, "no key file configured for it");
  load_chain(cert, out.chain);
  out.key = load_key(key, password);
  check_key_file_mode(key, warnings);
  if (X509_check_private_key(out.chain.leaf, out.key) != 1)
    fail("key", key, "does not match certificate " + quoted(cert));
  ERR_clear_error();
  check_validity(cert, out.chain.leaf, now, warnings);
}

std::vector<X509_CRL*> read_crls(const std::filesystem::path& file) {
  const std::string data = read_file("crl", file);
  ERR_clear_error();
  std::vector<X509_CRL*> out;
  if (data.find("-----BEGIN") != std::string::npos) {
    BioPtr b = mem_bio(data);
    while (X509_CRL* c = PEM_read_bio_X509_CRL(b.get(), nullptr, nullptr, nullptr)) out.push_back(c);
    const unsigned long e = ERR_peek_last_error();
    const bool clean_end =
        e == 0 || (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE);
    if (!clean_end || out.empty()) {
      for (X509_CRL* c : out) X509_CRL_free(c);
      fail("crl", file, "malformed PEM CRL (" + openssl_reason() + ")");
    }
  } else {
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    X509_CRL* c = d2i_X509_CRL(nullptr, &p, static_cast<long>(data.size()));
    if (!c) fail("crl", file, "neither a PEM nor a DER CRL (" + openssl_reason() + ")");
    out.push_back(c);
  }
  ERR_clear_error();
  return out;
}

// A CRL must come from a configured CA, verify against its key, and be current.
void check_crl(const std::filesystem::path& file, X509_CRL* crl, X509_STORE* store, std::time_t now) {
  const std::string issuer = name_text(X509_CRL_get_issuer(crl));
  X509_STORE_CTX* sctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(sctx, store, nullptr, nullptr);
  X509_OBJECT* obj = X509_STORE_CTX_get_obj_by_subject(sctx, X509_LU_X509, X509_CRL_get_issuer(crl));
  X509_STORE_CTX_free(sctx);
  if (!obj) fail("crl", file, "issued by '" + issuer + "', which is not among the CAs (ca / ca_dir)");
  X509* ca = X509_OBJECT_get0_X509(obj);
  const int ok = X509_CRL_verify(crl, X509_get0_pubkey(ca));
  X509_OBJECT_free(obj);
  if (ok != 1) fail("crl", file, "signature does not verify against the CA '" + issuer + "'");
  std::time_t t = now;
  const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl);
  if (next && X509_cmp_time(next, &t) < 0)
    fail("crl", file, "expired: its next update was due on " + asn1_time_text(next));
  if (X509_cmp_time(X509_CRL_get0_lastUpdate(crl), &t) > 0)
    fail("crl", file, "not valid before " + asn1_time_text(X509_CRL_get0_lastUpdate(crl)));
  ERR_clear_error();
}

// ---------------------------------------------------------------- digests

// SHA-256 over length-prefixed pieces: what a reload compares to learn whether
// the CAs or the CRLs changed.
class Digest {
 public:
  Digest() : md_(EVP_MD_CTX_new()) {
    if (!md_ || EVP_DigestInit_ex(md_, EVP_sha256(), nullptr) != 1)
      throw TlsError("tls: SHA-256 unavailable: " + openssl_reason());
  }
  ~Digest() { EVP_MD_CTX_free(md_); }
  Digest(const Digest&) = delete;
  Digest& operator=(const Digest&) = delete;
  void add(std::string_view piece) {
    const std::uint64_t n = piece.size();
    EVP_DigestUpdate(md_, &n, sizeof n);
    EVP_DigestUpdate(md_, piece.data(), piece.size());
  }
  std::string finish() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(md_, out, &len);
    return std::string(reinterpret_cast<const char*>(out), len);
  }

 private:
  EVP_MD_CTX* md_;
};

// Every regular file of a c_rehash folder, by name.
void add_folder(Digest& d, const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    d.add(f.filename().string());
    d.add(ss.str());
  }
}

// ---------------------------------------------------------------- OCSP

struct OcspResponseFree {
  void operator()(OCSP_RESPONSE* r) const { OCSP_RESPONSE_free(r); }
};
struct OcspBasicFree {
  void operator()(OCSP_BASICRESP* b) const { OCSP_BASICRESP_free(b); }
};

bool same_octets(const ASN1_OCTET_STRING* a, const unsigned char* b, unsigned int len) {
  return a && static_cast<unsigned int>(ASN1_STRING_length(a)) == len &&
         std::memcmp(ASN1_STRING_get0_data(a), b, len) == 0;
}

std::time_t asn1_time_t(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return timegm(&tm);
}

// The issuer of `leaf`: from the certificate file's chain, else from the CA store.
X509* find_issuer(X509* leaf, STACK_OF(X509) * chain, X509_STORE* store) {
  for (int i = 0; chain && i < sk_X509_num(chain); ++i) {
    X509* c = sk_X509_value(chain, i);
    if (X509_check_issued(c, leaf) == X509_V_OK) {
      X509_up_ref(c);
      return c;
    }
  }
  X509* issuer = nullptr;
  X509_STORE_CTX* sctx = X509_STORE_CTX_new();
  if (sctx && X509_STORE_CTX_init(sctx, store, leaf, nullptr) == 1)
    if (X509_STORE_CTX_get1_issuer(&issuer, sctx, leaf) != 1) issuer = nullptr;
  X509_STORE_CTX_free(sctx);
  ERR_clear_error();
  return issuer;
}

// The response must be a successful basic response that says "good" about
// `leaf` and is current at `now`; its signature is checked when the issuer of
// `leaf` is known (in the certificate file or among the CAs).
void load_ocsp(const std::filesystem::path& file, X509* leaf, STACK_OF(X509) * chain, X509_STORE* store,
               std::time_t now, TlsServerContext::Impl& impl) {
  const std::string data = read_file("ocsp_response", file);
  ERR_clear_error();
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  std::unique_ptr<OCSP_RESPONSE, OcspResponseFree> resp(
      d2i_OCSP_RESPONSE(nullptr, &p, static_cast<long>(data.size())));
  if (!resp || p != reinterpret_cast<const unsigned char*>(data.data()) + data.size())
    fail("ocsp_response", file, "not a DER OCSP response (" + openssl_reason() + ")");
  const int status = OCSP_response_status(resp.get());
  if (status != OCSP_RESPONSE_STATUS_SUCCESSFUL)
    fail("ocsp_response", file,
         std::string("the responder answered '") + OCSP_response_status_str(status) + "'");
  std::unique_ptr<OCSP_BASICRESP, OcspBasicFree> basic(OCSP_response_get1_basic(resp.get()));
  if (!basic) fail("ocsp_response", file, "no basic OCSP response inside (" + openssl_reason() + ")");

  std::unique_ptr<X509, decltype(&X509_free)> issuer(find_issuer(leaf, chain, store), X509_free);
  OCSP_SINGLERESP* single = nullptr;
  for (int i = 0; i < OCSP_resp_count(basic.get()) && !single; ++i) {
    OCSP_SINGLERESP* sr = OCSP_resp_get0(basic.get(), i);
    ASN1_OCTET_STRING* name_hash = nullptr;
    ASN1_OBJECT* md_obj = nullptr;
    ASN1_OCTET_STRING* key_hash = nullptr;
    ASN1_INTEGER* serial = nullptr;
    if (OCSP_id_get0_info(&name_hash, &md_obj, &key_hash, &serial,
                          const_cast<OCSP_CERTID*>(OCSP_SINGLERESP_get0_id(sr))) != 1)
      continue;
    if (!serial || ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(leaf)) != 0) continue;
    const EVP_MD* md = EVP_get_digestbyobj(md_obj);
    unsigned char h[EVP_MAX_MD_SIZE];
    unsigned int hl = 0;
    if (!md || X509_NAME_digest(X509_get_issuer_name(leaf), md, h, &hl) != 1 ||
        !same_octets(name_hash, h, hl))
      continue;
    if (issuer && (X509_pubkey_digest(issuer.get(), md, h, &hl) != 1 || !same_octets(key_hash, h, hl)))
      continue;
    single = sr;
  }
  if (!single)
    fail("ocsp_response", file,
         "is not about the server certificate (serial " + tls_detail::serial_hex(leaf) + ", issuer '" +
             name_text(X509_get_issuer_name(leaf)) + "')");

  int reason = 0;
  ASN1_GENERALIZEDTIME* revoked_at = nullptr;
  ASN1_GENERALIZEDTIME* this_update = nullptr;
  ASN1_GENERALIZEDTIME* next_update = nullptr;
  const int cert_status = OCSP_single_get0_status(single, &reason, &revoked_at, &this_update, &next_update);
  if (cert_status == V_OCSP_CERTSTATUS_REVOKED)
    fail("ocsp_response", file,
         "says the server certificate is revoked (since " + asn1_time_text(revoked_at) + ")");
  if (cert_status != V_OCSP_CERTSTATUS_GOOD)
    fail("ocsp_response", file, "says the server certificate's status is unknown");
  constexpr std::time_t kSkew = 300;  // clocks of the responder and this host may differ a little
  std::time_t t = now + kSkew;
  if (this_update && X509_cmp_time(this_update, &t) > 0)
    fail("ocsp_response", file, "not valid before " + asn1_time_text(this_update));
  t = now;
  if (next_update && X509_cmp_time(next_update, &t) < 0)
    fail("ocsp_response", file, "expired: its next update was due on " + asn1_time_text(next_update));

  if (issuer) {
    // Signed by the issuer itself or by a responder it delegated (OCSPSigning).
    X509_STORE* anchor = X509_STORE_new();
    STACK_OF(X509)* untrusted = sk_X509_new_null();
    X509_STORE_add_cert(anchor, issuer.get());
    X509_STORE_set_flags(anchor, X509_V_FLAG_PARTIAL_CHAIN);
    sk_X509_push(untrusted, issuer.get());
    for (int i = 0; chain && i < sk_X509_num(chain); ++i) sk_X509_push(untrusted, sk_X509_value(chain, i));
    const int ok = OCSP_basic_verify(basic.get(), untrusted, anchor, 0);
    sk_X509_free(untrusted);
    X509_STORE_free(anchor);
    if (ok != 1)
      fail("ocsp_response", file,
           "signature does not verify against the issuer '" + name_text(X509_get_subject_name(issuer.get())) +
               "' or a responder it delegated (" + openssl_reason() + ")");
  } else {
    impl.warnings.push_back("tls: ocsp_response " + quoted(file) +
                            ": the issuer of the server certificate is in neither cert nor ca; its "
                            "signature is left to the clients to check");
  }
  if (next_update) {
    std::time_t soon = now + 24 * 3600;
    if (X509_cmp_time(next_update, &soon) < 0)
      impl.warnings.push_back("tls: ocsp_response " + quoted(file) + ": next update due on " +
                              asn1_time_text(next_update) + "; replace the file before then");
  }
  ERR_clear_error();
  impl.ocsp_der.assign(data.begin(), data.end());
  X509_up_ref(leaf);
  impl.ocsp_leaf = leaf;
  impl.ocsp_next_update = next_update ? asn1_time_t(next_update) : 0;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string trim(std::string_view s) {
  std::size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

// "identity:hexkey" per line; blank lines and '#' comments ignored.
void read_psk_file(const std::filesystem::path& file, TlsServerContext::Impl& impl) {
  std::string data = read_file("psk_file", file);
  std::istringstream in(data);
  std::string raw;
  int lineno = 0;
  auto line_fail = [&](const std::string& why) {
    OPENSSL_cleanse(data.data(), data.size());
    OPENSSL_cleanse(raw.data(), raw.size());
    fail("psk_file", file, "line " + std::to_string(lineno) + ": " + why);
  };
  while (std::getline(in, raw)) {
    ++lineno;
    const std::string line = trim(raw);
    if (line.empty() || line[0] == '#') continue;
    const auto colon = line.rfind(':');
    if (colon == std::string::npos) line_fail("expected 'identity:hexkey'");
    const std::string id = trim(std::string_view(line).substr(0, colon));
    const std::string hex = trim(std::string_view(line).substr(colon + 1));
    if (id.empty()) line_fail("empty identity");
    if (id.size() > 128) line_fail("identity longer than 128 bytes");
    if (hex.size() % 2 != 0) line_fail("key is not an even number of hex digits");
    std::vector<unsigned char> key;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
      const int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
      if (hi < 0 || lo < 0) line_fail("key is not hexadecimal");
      key.push_back(static_cast<unsigned char>(hi * 16 + lo));
    }
    if (key.size() < 16) line_fail("key shorter than 16 bytes (128 bits)");
    if (key.size() > PSK_MAX_PSK_LEN)
      line_fail("key longer than " + std::to_string(PSK_MAX_PSK_LEN) + " bytes");
    if (!impl.psk.emplace(id, std::move(key)).second) line_fail("duplicate identity '" + id + "'");
  }
  OPENSSL_cleanse(data.data(), data.size());
  if (impl.psk.empty()) fail("psk_file", file, "no 'identity:hexkey' line");
}

bool host_matches(const std::string& pattern, const std::string& host) {
  if (pattern == host) return true;
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    const auto dot = host.find('.');
    return dot != std::string::npos && dot > 0 && host.compare(dot, std::string::npos, pattern, 1) == 0;
  }
  return false;
}

// ---------------------------------------------------------------- callbacks

TlsServerContext::Impl* impl_of(SSL* ssl) {
  return static_cast<TlsServerContext::Impl*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

int servername_cb(SSL* ssl, int* /*alert*/, void* arg) {
  auto* impl = static_cast<TlsServerContext::Impl*>(arg);
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name) return SSL_TLSEXT_ERR_NOACK;
  const std::string host = lower(name);
  for (const SniEntry& e : impl->sni) {
    if (!host_matches(e.hostname, host)) continue;
    if (SSL_use_cert_and_key(ssl, e.cert, e.key, e.chain, 1) != 1) return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_OK;  // unknown names get the default certificate
}

int alpn_cb(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
            unsigned int inlen, void* arg) {
  auto* impl = static_cast<TlsServerContext::Impl*>(arg);
  if (impl->config.alpn.empty()) return SSL_TLSEXT_ERR_NOACK;
  for (const std::string& want : impl->config.alpn) {
    for (unsigned int i = 0; i < inlen;) {
      const unsigned int n = in[i];
      if (i + 1 + n > inlen) break;
      if (n == want.size() && std::memcmp(in + i + 1, want.data(), n) == 0) {
        *out = in + i + 1;
        *outlen = static_cast<unsigned char>(n);
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + n;
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol (RFC 7301, 3.2)
}

// OCSP stapling (status_request): a copy of the response for the default
// certificate, while it is current (an SNI certificate has none).
int ocsp_status_cb(SSL* ssl, void* arg) {
  auto* impl = static_cast<TlsServerContext::Impl*>(arg);
  if (impl->ocsp_der.empty() || !impl->ocsp_leaf) return SSL_TLSEXT_ERR_NOACK;
  X509* served = SSL_get_certificate(ssl);
  if (!served || X509_cmp(served, impl->ocsp_leaf) != 0) return SSL_TLSEXT_ERR_NOACK;
  if (impl->ocsp_next_update != 0 && std::time(nullptr) > impl->ocsp_next_update) return SSL_TLSEXT_ERR_NOACK;
  auto* copy = static_cast<unsigned char*>(OPENSSL_memdup(impl->ocsp_der.data(), impl->ocsp_der.size()));
  if (!copy) return SSL_TLSEXT_ERR_NOACK;
  SSL_set_tlsext_status_ocsp_resp(ssl, copy, static_cast<long>(impl->ocsp_der.size()));  // takes ownership
  return SSL_TLSEXT_ERR_OK;
}

// TLS 1.2 PSK suites.
unsigned int psk_server_cb(SSL* ssl, const char* identity, unsigned char* psk, unsigned int max_len) {
  TlsServerContext::Impl* impl = impl_of(ssl);
  ConnectionHooks* h = tls_detail::hooks_of(ssl);
  const std::string_view id = identity ? identity : "";
  const auto it = impl->psk.find(id);
  if (it == impl->psk.end() || it->second.size() > max_len) {
    if (h) {
      h->psk_unknown = true;
      h->set().psk_identity = std::string(id.substr(0, 128));
    }
    return 0;  // OpenSSL answers unknown_psk_identity
  }
  std::memcpy(psk, it->second.data(), it->second.size());
  if (h) {
    h->psk_used = true;
    h->psk_external = true;
    h->set().psk_identity = std::string(id);
  }
  return static_cast<unsigned int>(it->second.size());
}

// TLS 1.3 external PSK: a session made from the PSK file, SHA-256 based.
int psk_find_session_cb(SSL* ssl, const unsigned char* identity, std::size_t identity_len,
                        SSL_SESSION** sess) {
  *sess = nullptr;
  TlsServerContext::Impl* impl = impl_of(ssl);
  ConnectionHooks* h = tls_detail::hooks_of(ssl);
  const std::string_view id(reinterpret_cast<const char*>(identity), identity_len);
  const auto it = impl->psk.find(id);
  if (it == impl->psk.end()) {
    if (h) {
      h->psk_unknown = true;
      h->set().psk_identity = std::string(id.substr(0, 128));
    }
    return 1;  // no PSK: the handshake goes on with a certificate, if there is one
  }
  static constexpr unsigned char kAes128GcmSha256[] = {0x13, 0x01};
  static constexpr unsigned char kChacha20Sha256[] = {0x13, 0x03};
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kAes128GcmSha256);
  if (!cipher) cipher = SSL_CIPHER_find(ssl, kChacha20Sha256);
  if (!cipher) return 0;
  SSL_SESSION* s = SSL_SESSION_new();
  if (!s || SSL_SESSION_set1_master_key(s, it->second.data(), it->second.size()) != 1 ||
      SSL_SESSION_set_cipher(s, cipher) != 1 || SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(s);
    return 0;
  }
  *sess = s;
  if (h) {
    h->psk_used = true;
    h->psk_external = true;
    h->psk_unknown = false;
    h->set().psk_identity = std::string(id);
  }
  return 1;
}

int ticket_key_cb(SSL* ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                  EVP_CIPHER_CTX* cctx, EVP_MAC_CTX* hctx, int enc) {
  TlsServerContext::Impl* impl = impl_of(ssl);
  if (!impl->tickets) return 0;
  if (ConnectionHooks* h = tls_detail::hooks_of(ssl); h && h->now != std::chrono::steady_clock::time_point{})
    impl->tickets->maybe_rotate(h->now);
  TicketKey k;
  int result = 1;
  if (enc) {
    impl->tickets->current(k);
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1) return -1;
    std::memcpy(key_name, k.name, sizeof k.name);
    if (EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, k.aes, iv) != 1) result = -1;
  } else {
    result = impl->tickets->find(key_name, k);
    if (result == 0) return 0;  // unknown or retired key: full handshake
    if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), nullptr, k.aes, iv) != 1) result = -1;
  }
  if (result > 0) {
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof k.hmac),
                           OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (EVP_MAC_CTX_set_params(hctx, params) != 1) result = -1;
  }
  OPENSSL_cleanse(&k, sizeof k);
  return result;
}

// Records which certificate failed first; the decision stays OpenSSL's.
int verify_cb(int preverify_ok, X509_STORE_CTX* x) {
  if (preverify_ok) return preverify_ok;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx()));
  ConnectionHooks* h = ssl ? tls_detail::hooks_of(ssl) : nullptr;
  if (h && h->verify_depth < 0) {
    h->verify_depth = X509_STORE_CTX_get_error_depth(x);
    if (const X509* c = X509_STORE_CTX_get_current_cert(x))
      h->set().verify_subject = name_text(X509_get_subject_name(c));
  }
  return preverify_ok;
}

// The PSK identity travels inside the session ticket (TLS 1.3 sessions made
// from an external PSK do not carry it), so a resumed PSK client keeps it.
constexpr std::string_view kPskTag = "psk:";

int ticket_gen_cb(SSL* ssl, void* /*arg*/) {
  ConnectionHooks* h = tls_detail::hooks_of(ssl);
  SSL_SESSION* s = SSL_get_session(ssl);
  if (!s) return 1;
  std::string data;
  if (h && h->psk_used) data = std::string(kPskTag) + h->psk_identity();
  return SSL_SESSION_set1_ticket_appdata(s, data.data(), data.size());
}

SSL_TICKET_RETURN ticket_dec_cb(SSL* ssl, SSL_SESSION* ss, const unsigned char* /*keyname*/,
                                std::size_t /*keyname_len*/, SSL_TICKET_STATUS status, void* /*arg*/) {
  switch (status) {
    case SSL_TICKET_EMPTY:
    case SSL_TICKET_NO_DECRYPT:
      return SSL_TICKET_RETURN_IGNORE_RENEW;
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW: {
      void* data = nullptr;
      std::size_t len = 0;
      ConnectionHooks* h = tls_detail::hooks_of(ssl);
      if (h && ss && SSL_SESSION_get0_ticket_appdata(ss, &data, &len) == 1 && len > kPskTag.size()) {
        const std::string_view v(static_cast<const char*>(data), len);
        if (v.substr(0, kPskTag.size()) == kPskTag) {
          h->psk_used = true;
          h->psk_external = false;
          h->set().psk_identity = std::string(v.substr(kPskTag.size()));
        }
      }
      // TLS 1.3 tickets are for one connection (RFC 8446 section C.4; OpenSSL
      // clients mark a session not resumable once used), so every resumed TLS
      // 1.3 handshake hands out a new ticket, or the client's next connection
      // would be a full handshake. A TLS 1.2 ticket may be reused: renewed only
      // when its key has been rotated out of first place.
      if (status == SSL_TICKET_SUCCESS_RENEW ||
          (ss && SSL_SESSION_get_protocol_version(ss) == TLS1_3_VERSION))
        return SSL_TICKET_RETURN_USE_RENEW;
      return SSL_TICKET_RETURN_USE;
    }
    default:
      return SSL_TICKET_RETURN_ABORT;
  }
}

[[noreturn]] void config_fail(std::string_view key, std::string_view reason) {
  ERR_clear_error();
  throw TlsError("tls: " + std::string(key) + ": " + std::string(reason));
}

}  // namespace

// ---------------------------------------------------------------- load

TlsServerContext::TlsServerContext() : impl_(std::make_unique<Impl>()) {}
TlsServerContext::~TlsServerContext() = default;

const TlsServerConfig& TlsServerContext::config() const {
  return impl_->config;
}
const std::vector<std::string>& TlsServerContext::warnings() const {
  return impl_->warnings;
}
SSL_CTX* TlsServerContext::native_handle() const {
  return impl_->ctx;
}
bool TlsServerContext::has_crl() const {
  return !impl_->crls.empty();
}
std::size_t TlsServerContext::psk_count() const {
  return impl_->psk.size();
}
bool TlsServerContext::staples_ocsp() const {
  return !impl_->ocsp_der.empty();
}

std::vector<std::filesystem::path> watched_paths(const TlsServerConfig& c) {
  std::vector<std::filesystem::path> out;
  for (const auto* p : {&c.cert, &c.key, &c.ca, &c.ca_dir, &c.psk_file, &c.ocsp_response})
    if (!p->empty()) out.push_back(*p);
  for (const auto& p : c.crl) out.push_back(p);
  for (const auto& s : c.sni) {
    out.push_back(s.cert);
    out.push_back(s.key);
  }
  return out;
}

void TlsServerContext::rotate_ticket_keys() const {
  if (impl_->tickets) impl_->tickets->rotate();
}
void TlsServerContext::maybe_rotate_ticket_keys(std::chrono::steady_clock::time_point now) const {
  if (impl_->tickets) impl_->tickets->maybe_rotate(now);
}

bool TlsServerContext::revoked(const X509* cert) const {
  if (!cert) return false;
  for (X509_CRL* crl : impl_->crls) {
    if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_issuer_name(cert)) != 0) continue;
    X509_REVOKED* entry = nullptr;
    // 1: listed; 2: listed as removeFromCRL (a delta CRL un-revoking it).
    if (X509_CRL_get0_by_serial(crl, &entry, X509_get0_serialNumber(cert)) == 1) return true;
  }
  return false;
}

std::shared_ptr<const TlsServerContext> TlsServerContext::load(const TlsServerConfig& config,
                                                               std::chrono::system_clock::time_point now,
                                                               const TlsServerContext* previous) {
  std::shared_ptr<TlsServerContext> self(new TlsServerContext());
  Impl& impl = *self->impl_;
  impl.config = config;
  const std::time_t now_t = std::chrono::system_clock::to_time_t(now);
  ERR_clear_error();

  if (config.cert.empty() && config.psk_file.empty())
    config_fail("cert", "a TLS listener needs cert and key (or psk_file)");
  if (config.cert.empty() && !config.key.empty()) config_fail("key", "key is set but cert is not");
  if (!config.cert.empty() && config.key.empty()) config_fail("key", "cert is set but key is not");
  int min_version = 0;
  if (config.min_version == "1.2") {
    min_version = TLS1_2_VERSION;
  } else if (config.min_version == "1.3") {
    min_version = TLS1_3_VERSION;
  } else {
    config_fail("min_version", "'" + config.min_version + "' is not \"1.2\" or \"1.3\"");
  }
  if (config.verify_depth < 0 || config.verify_depth > 16) config_fail("verify_depth", "must be 0..16");
  if (config.client_cert != ClientCertMode::None && config.ca.empty() && config.ca_dir.empty())
    config_fail("ca", "client_cert = \"" + std::string(to_string(config.client_cert)) +
                          "\" needs ca or ca_dir to verify client certificates");
  if (!config.crl.empty() && config.ca.empty() && config.ca_dir.empty())
    config_fail("crl", "CRLs need ca or ca_dir (the CAs that sign them)");
  if (config.ticket_key_rotation.count() <= 0) config_fail("ticket_key_rotation", "must be positive");
  if (!config.ocsp_response.empty() && config.cert.empty())
    config_fail("ocsp_response", "needs cert (the response is about the server certificate)");
  if (config.psk_plain_suites && config.psk_file.empty()) config_fail("psk_plain_suites", "needs psk_file");
  for (const auto& p : config.alpn)
    if (p.empty() || p.size() > 255) config_fail("alpn", "protocol names are 1..255 bytes");

  impl.ctx = SSL_CTX_new(TLS_server_method());
  if (!impl.ctx) config_fail("tls", "cannot create an SSL_CTX: " + openssl_reason());
  SSL_CTX* ctx = impl.ctx;
  SSL_CTX_set_app_data(ctx, &impl);

  // Versions, options and algorithms.
  SSL_CTX_set_min_proto_version(ctx, min_version);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1 | SSL_OP_NO_COMPRESSION |
                               SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  std::string ciphers = config.ciphers;
  if (ciphers.empty()) {
    ciphers = std::string(kDefaultCiphers);
    if (!config.psk_file.empty()) ciphers += ":" + std::string(kDefaultPskCiphers);
    if (!config.psk_file.empty() && config.psk_plain_suites) ciphers += ":" + std::string(kPlainPskCiphers);
  }
  if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1)
    config_fail("ciphers", "no usable TLS 1.2 cipher in '" + ciphers + "'");
  const std::string suites =
      config.ciphersuites.empty() ? std::string(kDefaultCiphersuites) : config.ciphersuites;
  if (SSL_CTX_set_ciphersuites(ctx, suites.c_str()) != 1)
    config_fail("ciphersuites", "invalid TLS 1.3 ciphersuites '" + suites + "'");
  if (SSL_CTX_set1_groups_list(ctx, std::string(kGroups).c_str()) != 1)
    config_fail("tls", "cannot set key-exchange groups: " + openssl_reason());
  // The server certificate, and the extra ones chosen by SNI.
  CertAndKey server;  // kept for the OCSP response, checked once the CAs are loaded
  if (!config.cert.empty()) {
    load_cert_and_key(config.cert, config.key, config.key_password, now_t, impl.warnings, server);
    if (SSL_CTX_use_cert_and_key(ctx, server.chain.leaf, server.key, server.chain.extra, 1) != 1)
      fail("certificate", config.cert, "refused by OpenSSL: " + openssl_reason());
  }
  for (const TlsSniCert& s : config.sni) {
    if (s.hostname.empty()) config_fail("sni", "empty hostname");
    CertAndKey ck;
    load_cert_and_key(s.cert, s.key, s.key_password, now_t, impl.warnings, ck);
    SniEntry e;
    e.hostname = lower(s.hostname);
    e.cert = std::exchange(ck.chain.leaf, nullptr);
    e.chain = std::exchange(ck.chain.extra, nullptr);
    e.key = std::exchange(ck.key, nullptr);
    impl.sni.push_back(e);
  }
  // Also records the requested name when there is no SNI certificate.
  SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, reinterpret_cast<void (*)()>(servername_cb));
  SSL_CTX_set_tlsext_servername_arg(ctx, &impl);

  // Client certificates: trust anchors, CRLs, verification mode.
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  Digest ca_digest;
  Digest crl_digest;
  if (!config.ca.empty()) {
    // read first: a precise message for a missing or unreadable file
    ca_digest.add(read_file("ca", config.ca));
    if (X509_STORE_load_file(store, config.ca.c_str()) != 1)
      fail("ca", config.ca, "no usable CA certificate (" + openssl_reason() + ")");
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.ca.c_str());
    if (names) SSL_CTX_set_client_CA_list(ctx, names);
    ERR_clear_error();
  }
  if (!config.ca_dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(config.ca_dir, ec))
      fail("ca_dir", config.ca_dir, "not a readable folder");
    if (X509_STORE_load_path(store, config.ca_dir.c_str()) != 1)
      fail("ca_dir", config.ca_dir, "cannot use it (" + openssl_reason() + ")");
    add_folder(ca_digest, config.ca_dir);
  }
  impl.ca_digest = ca_digest.finish();
  for (const auto& file : config.crl) {
    crl_digest.add(file.string());
    crl_digest.add(read_file("crl", file));
    for (X509_CRL* crl : read_crls(file)) {
      impl.crls.push_back(crl);
      check_crl(file, crl, store, now_t);
      if (X509_STORE_add_crl(store, crl) != 1) fail("crl", file, "refused by OpenSSL: " + openssl_reason());
    }
  }
  impl.crl_digest = crl_digest.finish();
  if (!impl.crls.empty()) {
    unsigned long flags = X509_V_FLAG_CRL_CHECK;
    if (config.crl_check == CrlCheck::Chain) flags |= X509_V_FLAG_CRL_CHECK_ALL;
    X509_STORE_set_flags(store, flags);
  }
  SSL_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
  SSL_CTX_set_verify_depth(ctx, config.verify_depth);
  int mode = SSL_VERIFY_NONE;
  if (config.client_cert == ClientCertMode::Optional) mode = SSL_VERIFY_PEER;
  if (config.client_cert == ClientCertMode::Required)
    mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  SSL_CTX_set_verify(ctx, mode, verify_cb);

  // Pre-shared keys.
  std::string psk_digest;
  if (!config.psk_file.empty()) {
    read_psk_file(config.psk_file, impl);
    Digest d;
    for (const auto& [id, key] : impl.psk) {
      d.add(id);
      d.add(std::string_view(reinterpret_cast<const char*>(key.data()), key.size()));
    }
    psk_digest = d.finish();
    check_key_file_mode(config.psk_file, impl.warnings);
    SSL_CTX_set_psk_server_callback(ctx, psk_server_cb);
    SSL_CTX_set_psk_find_session_callback(ctx, psk_find_session_cb);
  }

  if (!config.ocsp_response.empty()) {
    load_ocsp(config.ocsp_response, server.chain.leaf, server.chain.extra, store, now_t, impl);
    SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB,
                          reinterpret_cast<void (*)()>(ocsp_status_cb));
    SSL_CTX_set_tlsext_status_arg(ctx, &impl);
  }

  // Sessions resume only under the same client-authentication settings and
  // the same trust: the session id context is a digest of the settings and of
  // the content of the CAs (and, with crl_check = "chain", of the CRLs) and of
  // the PSKs. OpenSSL resumes a TLS 1.2 ticket or a TLS 1.3 ticket PSK only
  // when the session's context equals the server's, so after a reload that
  // drops a CA (even one rewritten at the same path) every session
  // established under the old trust falls back to a full handshake, which
  // verifies the certificate against the new CAs. Leaf CRLs are not part of
  // it (a routinely refreshed CRL would end every session): a resumed session
  // is checked against the current CRLs when it is established.
  {
    Digest sid;
    sid.add("moat session context 2");
    sid.add(to_string(config.client_cert));
    sid.add(config.ca.string());
    sid.add(config.ca_dir.string());
    sid.add(impl.ca_digest);
    sid.add(to_string(config.crl_check));
    sid.add(config.crl_check == CrlCheck::Chain ? impl.crl_digest : std::string());
    sid.add(to_string(config.identity_from));
    sid.add(config.psk_file.string());
    sid.add(psk_digest);
    sid.add(std::to_string(config.verify_depth));
    impl.session_context = sid.finish();
    SSL_CTX_set_session_id_context(ctx, reinterpret_cast<const unsigned char*>(impl.session_context.data()),
                                   static_cast<unsigned int>(std::min<std::size_t>(
                                       impl.session_context.size(), SSL_MAX_SID_CTX_LENGTH)));
  }

  // Session tickets (TLS 1.2 and 1.3), stateless, keys in a rotating ring.
  // There is no server-side session cache, so TLS 1.2 session ids never
  // resume. The ring of the context being replaced carries over only when the
  // session context is the same: a change of trust also retires the keys.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (config.session_tickets) {
    if (previous && previous->impl_->tickets && previous->impl_->session_context == impl.session_context)
      impl.tickets = previous->impl_->tickets;
    else
      impl.tickets = std::make_shared<TicketKeyRing>(config.ticket_key_rotation);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb);
    SSL_CTX_set_session_ticket_cb(ctx, ticket_gen_cb, ticket_dec_cb, nullptr);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_timeout(ctx, static_cast<long>(config.ticket_key_rotation.count()));
  } else {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 0);
  }

  SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, &impl);
  ERR_clear_error();
  return self;
}

}  // namespace moat::security
