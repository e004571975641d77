Feature: Backpressure
  A full queue never makes a client wait silently: the server answers 429 with retry guidance,
  or, under drop-lru, evicts the oldest batch task and tells its reader why.

  Scenario: A full queue under the reject policy refuses the newcomer
    Given a server whose single-slot pool queues 1 task and rejects when full
    And task "blocker" holds the slot
    And task "waiting" waits in the queue
    When I submit task "late" for 4 tokens
    Then the answer is 429 ADMISSION_REJECT
    And the refusal says when to retry

  Scenario: A full queue under drop-lru evicts the oldest batch task for an interactive one
    Given a server whose single-slot pool queues 1 task and drops the oldest when full
    And task "blocker" holds the slot
    And batch task "old" waits in the queue
    When I submit task "urgent" for 4 tokens
    Then task "urgent" is admitted
    When I read the stream of task "old"
    Then the stream of task "old" ends with error QUEUE_FULL_DROP_LRU

  Scenario: Under drop-lru a batch newcomer never evicts an interactive task
    Given a server whose single-slot pool queues 1 task and drops the oldest when full
    And task "blocker" holds the slot
    And task "waiting" waits in the queue
    When I submit batch task "late" for 4 tokens
    Then the answer is 429 QUEUE_FULL_DROP_LRU
    And the refusal says when to retry
