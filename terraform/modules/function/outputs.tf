output "url" {
  description = "The service's URL."
  value       = google_cloud_run_v2_service.function.uri
}

output "service_account" {
  description = "The function's own identity."
  value       = google_service_account.function.email
}

output "subscriptions" {
  description = "Names of the push subscriptions delivering to it."
  value       = keys(google_pubsub_subscription.push)
}
