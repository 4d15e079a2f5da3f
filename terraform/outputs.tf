output "frontend_url" {
  description = "POST <frontend_url>/order to place an order."
  value       = module.function["frontend"].url
}

output "function_urls" {
  description = "Cloud Run URL of each function."
  value       = { for name, f in module.function : name => f.url }
}

output "topics" {
  description = "Every topic, dead-letter topics included."
  value       = sort(keys(google_pubsub_topic.topics))
}

output "push_subscriptions" {
  description = "Push subscription name => function it delivers to."
  value       = merge([for name, f in module.function : { for s in f.subscriptions : s => name }]...)
}

output "pull_subscriptions" {
  description = "Pull subscriptions to watch: gcloud pubsub subscriptions pull <name> --auto-ack."
  value       = sort(keys(google_pubsub_subscription.pull))
}

output "image_repository" {
  description = "Where to push the function images."
  value       = local.registry
}
