"""A queue of jobs, indented with tabs."""


class JobQueue:
	def __init__(self):
		self.jobs = []

	def push(self, job):
		self.jobs.append(job)
		return len(self.jobs)

	def pop_oldest(self):
		if not self.jobs:
			return None
		return self.jobs.pop(0)
