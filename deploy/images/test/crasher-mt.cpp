// Test workload: a static C++ program whose fourth thread crashes while the others wait,
// in a function with a known name (the core's crashing thread is that one). Built by
// deploy/images/test-images.sh into the image coredump-detector/test-crasher-mt.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

namespace {
std::mutex mu;
std::condition_variable cv;
bool never = false;

void idle_worker() {
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [] { return never; });
}
}  // namespace

__attribute__((noinline)) void crash_in_worker_thread(int n) {
  std::fprintf(stderr, "crasher-mt: thread %d crashing in crash_in_worker_thread\n", n);
  *reinterpret_cast<volatile int*>(0) = n;
}

int main() {
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; i++) threads.emplace_back(idle_worker);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::thread crasher([] { crash_in_worker_thread(3); });
  crasher.join();
  for (auto& t : threads) t.join();
  return 0;
}
