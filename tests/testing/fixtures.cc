#include "tests/testing/fixtures.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

namespace loraserve::testing {
namespace {

bool IsDir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string>& TempDirs() {
  static auto* dirs = new std::vector<std::string>();
  return *dirs;
}

void RemoveTempDirs() {
  for (const auto& d : TempDirs()) {
    std::error_code ec;
    std::filesystem::remove_all(d, ec);
  }
}

}  // namespace

std::string SourceDir() { return LORASERVE_SOURCE_DIR; }

std::string SharedDir() {
  if (const char* env = std::getenv("LORASERVE_SHARED_DIR"); env != nullptr && *env != '\0') {
    return IsDir(env) ? std::string(env) : std::string();
  }
  const std::string dir = std::string(LORASERVE_SOURCE_DIR) + "/../shared";
  return IsDir(dir) ? dir : std::string();
}

std::string SharedPath(const std::string& relative) { return SharedDir() + "/" + relative; }

bool RunningInCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

std::string MakeTempDir() {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(RemoveTempDirs); });
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base != nullptr && *base ? base : "/tmp") + "/loraserve-test-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) return std::string();
  TempDirs().emplace_back(buf.data());
  return std::string(buf.data());
}

}  // namespace loraserve::testing
