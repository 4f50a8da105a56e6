#include <atomic>
#include <chrono>
#include <thread>
#include <vector>
#include <unistd.h>

std::atomic<int> ready{0};
volatile int *null_ptr;

__attribute__((noinline)) void idle_worker(int) {
    ready++;
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

namespace worker {
__attribute__((noinline)) void crash_in_worker(int id) {
    while (ready.load() < 7) usleep(1000);
    *null_ptr = id;
}
}

int main() {
    std::vector<std::thread> ts;
    for (int i = 0; i < 8; i++) {
        if (i == 5) ts.emplace_back(worker::crash_in_worker, i);
        else ts.emplace_back(idle_worker, i);
    }
    for (auto &t : ts) t.join();
}
